"""The benchmark's anchors: the PyTorch Xception is ours layer for layer; the ImageNet-like JPEG folder."""

import os
import sys

import pytest
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


def test_the_pytorch_xception_has_our_parameter_counts_and_stage_shapes():
    torch = pytest.importorskip("torch")
    import mindspore as ms
    import numpy as np
    from mindcv.models import create_model
    from torch_xception import TorchXception, keras_style_count

    theirs, ours = TorchXception(), create_model("xception", num_classes=1000)
    assert keras_style_count(theirs) == 22_910_480 == sum(p.size for p in ours.get_parameters())
    assert sum(p.numel() for p in theirs.parameters()) == 22_855_952 == sum(p.size for p in ours.trainable_params())
    theirs.eval()
    x = torch.zeros(1, 3, 96, 96)
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in _stages(theirs, x)]
    features = create_model("xception", features_only=True)(ms.Tensor(np.zeros((1, 3, 96, 96), np.float32)))
    assert shapes == [tuple(f.shape) for f in features]


def _stages(net, x):
    """The five stage outputs ``features_only`` gives: stem, entry blocks 1 and 2, middle flow, exit flow."""
    s0 = net.stem(x)
    s1 = net.entry[0](s0)
    s2 = net.entry[1](s1)
    s3 = net.middle(net.entry[2](s2))
    return [s0, s1, s2, s3, net.head[:6](net.exit(s3))]


def test_imagenet_like_folder_is_500_by_375_jpegs_in_class_folders_and_reproducible(tmp_path):
    from imagenet_like import make_imagenet_like

    make_imagenet_like(str(tmp_path / "a"), images=12, classes=3)
    make_imagenet_like(str(tmp_path / "b"), images=12, classes=3)
    classes = sorted(os.listdir(tmp_path / "a" / "train"))
    files = [
        tmp_path / "a" / "train" / c / f for c in classes for f in sorted(os.listdir(tmp_path / "a" / "train" / c))
    ]
    assert len(classes) == 3 and len(files) == 12
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG" and sorted(image.size) == [375, 500]
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert twin.read_bytes() == path.read_bytes()


@pytest.mark.slow
def test_bench_smoke_run_reports_the_anchors_the_pipeline_and_the_machine(tmp_path):
    import json

    from helpers import run_script

    pytest.importorskip("onnxruntime")
    networks = "onnxruntime,torch" if _installed("torch") else "onnxruntime"
    code, out, err = run_script(
        [
            "benchmarks/bench.py",
            "--cases",
            "infer_71_b1",
            "--rounds",
            "1",
            "--networks",
            networks,
            "--pipeline",
            "--pipeline-images",
            "64",
            "--pipeline-batches",
            "1",
            "--pipeline-dir",
            str(tmp_path / "jpegs"),
            "--json",
        ],
        timeout=600,
    )
    assert code == 0, err[-2000:]
    report = json.loads(out.strip().splitlines()[-1])
    env = report["environment"]
    assert {"cpu", "cpu_vector_extensions", "avx2", "avx512", "torch", "onnxruntime", "mindspore"} <= env.keys()
    case = report["cases"]["infer_71_b1"]
    assert all(case[f"{n}_img_s"] > 0 for n in networks.split(","))
    pipeline = report["pipeline"]
    assert pipeline["images"] == 64 and pipeline["ours_img_s"] > 0 and pipeline["mindcv_img_s"] > 0
    assert {"first_ms_per_image", "again_ms_per_image"} <= pipeline["scan"].keys()


def _installed(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True
