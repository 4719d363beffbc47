"""Inference backends: ONNX Runtime on the cached export gives MindSpore's logits; the cache is keyed and healed."""

import json
import logging
import os

import numpy as np
import pytest

import mindcv_xception.backends as backends
from helpers import sample_photos, save_small
from mindcv_xception import onednn_isa
from mindcv_xception.backends import BackendError, choose_backend, onnx_cache_path, predictor
from mindcv_xception.inference import checkpoint_preprocessing, image_logits, load_for_inference, main
from mindcv_xception.preprocessing import preprocess


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 5-class xception_small checkpoint (random BN statistics), its network and a 71 px preprocessing."""
    ckpt = save_small(str(tmp_path_factory.mktemp("backends") / "small.ckpt"), 5)
    net, meta = load_for_inference(ckpt)
    return ckpt, net, checkpoint_preprocessing(meta, {"image_resize": 71})


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name, photo in zip(("astronaut.png", "chelsea.jpg", "coffee.jpg"), sample_photos()):
        photo.save(folder / name)
    return sorted(str(folder / f) for f in os.listdir(folder))


def test_auto_picks_onnxruntime_on_cpu_and_mindspore_on_ascend_and_gpu():
    assert choose_backend("auto", "CPU") == "onnxruntime"
    assert choose_backend("auto", "Ascend") == "mindspore" and choose_backend("auto", "GPU") == "mindspore"
    assert choose_backend("mindspore", "CPU") == "mindspore"


def test_without_onnxruntime_auto_falls_back_and_asking_for_it_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(backends, "onnxruntime_available", lambda: False)
    assert choose_backend("auto", "CPU") == "mindspore"
    with pytest.raises(BackendError, match="pip install onnxruntime"):
        choose_backend("onnxruntime", "CPU")


def test_onnxruntime_gives_the_mindspore_logits_for_images(small, photos):
    ckpt, net, prep = small
    ours = image_logits(predictor(net, ckpt, prep, "mindspore"), photos, prep)
    onnx = image_logits(predictor(net, ckpt, prep, "onnxruntime"), photos, prep)
    assert ours.shape == (3, 5)
    np.testing.assert_allclose(onnx, ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())


def test_batches_other_than_the_exported_one_are_padded_or_split(small, photos):
    ckpt, net, prep = small
    x = np.stack([preprocess(p, prep) for p in photos])
    two = predictor(net, ckpt, prep, "onnxruntime", batch_size=2)
    assert two.batch_size == 2
    ours = predictor(net, ckpt, prep, "mindspore")(x)
    np.testing.assert_allclose(two(x), ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())  # 3 = 2 + 1 padded


def test_the_export_is_made_once_and_reused(small, monkeypatch):
    ckpt, net, prep = small
    predictor(net, ckpt, prep, "onnxruntime", batch_size=4)
    exports = []
    real = backends.export_onnx
    monkeypatch.setattr(backends, "export_onnx", lambda *a: exports.append(a) or real(*a))
    again = predictor(net, ckpt, prep, "onnxruntime", batch_size=4)
    assert exports == [] and os.path.exists(again.path)


def test_a_changed_checkpoint_or_input_size_gets_its_own_export(small, tmp_path):
    ckpt, net, prep = small
    copy = tmp_path / "small.ckpt"
    copy.write_bytes(open(ckpt, "rb").read())
    same = os.path.basename(onnx_cache_path(str(copy), net, prep, 1))
    assert same == os.path.basename(onnx_cache_path(ckpt, net, prep, 1))  # the key is the content, not the place
    with open(copy, "ab") as f:
        f.write(b"\0")
    assert os.path.basename(onnx_cache_path(str(copy), net, prep, 1)) != same
    from dataclasses import replace

    assert onnx_cache_path(ckpt, net, replace(prep, image_size=72), 1) != onnx_cache_path(ckpt, net, prep, 1)


def test_a_corrupt_cache_entry_is_exported_again(small, photos, caplog):
    ckpt, net, prep = small
    path = onnx_cache_path(ckpt, net, prep, 3)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"not an onnx model")
    x = np.stack([preprocess(p, prep) for p in photos])
    with caplog.at_level(logging.WARNING, logger="mindcv_xception"):
        fixed = predictor(net, ckpt, prep, "onnxruntime", batch_size=3)
    assert "not loadable" in caplog.text and os.path.getsize(path) > 1000
    ours = predictor(net, ckpt, prep, "mindspore")(x)
    np.testing.assert_allclose(fixed(x), ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())


def test_infer_names_its_backend_and_both_give_the_same_probabilities(small, photos, capsys, caplog):
    ckpt, _, _ = small
    probs = {}
    for backend, name in (("mindspore", "MindSpore"), ("onnxruntime", "ONNX Runtime")):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mindcv_xception"):
            assert main(["--ckpt_path", ckpt, "--image_size", "71", "--json", "--backend", backend, *photos]) == 0
        said = [r.message for r in caplog.records if r.message.startswith("Inference backend")]
        assert len(said) == 1 and said[0].startswith(f"Inference backend: {name} "), said
        choice = onednn_isa.current_choice()
        if backend == "mindspore" and choice.isa != "default":  # the cap this process runs with is named
            assert f"(CPU, oneDNN capped at {choice.isa})" in said[0], said
        results = json.loads(capsys.readouterr().out)["results"]
        probs[backend] = {(r["image"], e["index"]): e["probability"] for r in results for e in r["top"]}
    assert probs["onnxruntime"].keys() == probs["mindspore"].keys()
    keys = list(probs["mindspore"])
    np.testing.assert_allclose(
        [probs["onnxruntime"][k] for k in keys], [probs["mindspore"][k] for k in keys], atol=1e-5
    )


def test_auto_runs_mindspore_when_the_export_cannot_be_kept(small, tmp_path, monkeypatch):
    from mindcv_xception.backends import MindSporePredictor
    from mindcv_xception.weights import CACHE_ENV

    ckpt, net, prep = small
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "file" / "cache"))  # a path under a file: never writable
    assert isinstance(predictor(net, ckpt, prep, "auto"), MindSporePredictor)
    with pytest.raises(BackendError, match="MINDCV_XCEPTION_CACHE"):
        predictor(net, ckpt, prep, "onnxruntime")
