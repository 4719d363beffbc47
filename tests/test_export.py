"""export.py writes deployable fp32 eval-mode models that give the network's outputs."""

import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from helpers import images, save_small
from mindcv_xception.export import export_checkpoint, main
from mindcv_xception.inference import load_for_inference


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_small(str(tmp_path_factory.mktemp("export") / "small.ckpt"), 5)


def _reference(ckpt: str, x: ms.Tensor) -> np.ndarray:
    net, _ = load_for_inference(ckpt)
    return net(x).asnumpy()


def test_mindir_export_loads_back_and_gives_the_networks_outputs(checkpoint, tmp_path):
    path = export_checkpoint(checkpoint, "MINDIR", str(tmp_path / "small"), image_size=71)
    assert path == str(tmp_path / "small.mindir")
    x = images(1, 71)
    exported = nn.GraphCell(ms.load(path))
    np.testing.assert_allclose(exported(x).asnumpy(), _reference(checkpoint, x), rtol=1e-5, atol=1e-5)


def test_onnx_export_runs_in_onnxruntime_with_opset_11_and_gives_the_networks_outputs(checkpoint, tmp_path):
    import onnx
    import onnxruntime

    path = export_checkpoint(checkpoint, "ONNX", str(tmp_path / "small"), image_size=96, batch_size=2)
    assert [o.version for o in onnx.load(path).opset_import] == [11]
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = images(2, 96)
    got = session.run(None, {session.get_inputs()[0].name: x.asnumpy()})[0]
    np.testing.assert_allclose(got, _reference(checkpoint, x), rtol=1e-4, atol=1e-4)


def test_cli_writes_only_the_model_file(checkpoint, tmp_path, capsys):
    out = tmp_path / "cli"
    out.mkdir()
    args = ["--ckpt_path", checkpoint, "--file_format", "mindir", "--output", str(out / "net"), "--image_size", "71"]
    assert main(args) == 0
    assert os.listdir(out) == ["net.mindir"]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"wrote {out / 'net.mindir'}"
    # the input contract: a checkpoint without a preprocessing record keeps infer.py's previous one
    assert lines[1].startswith("input: 1 x 3 x 71 x 71, RGB, shorter side resized to 79 (bicubic)")
    assert "mean [127.5, 127.5, 127.5], std [127.5, 127.5, 127.5]" in lines[1]


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert main(["--ckpt_path", str(tmp_path / "none.ckpt"), "--file_format", "ONNX"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint not found" in err
