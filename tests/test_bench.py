"""The benchmark's anchors: the PyTorch Xception is ours layer for layer; the ImageNet-like JPEG folder."""

import os
import sys

import pytest
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from bench import installed  # noqa: E402


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
    networks = "onnxruntime,torch" if installed("torch") else "onnxruntime"
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
            "--pipeline-workers",
            "1",
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
    assert pipeline["workers"] == 1
    assert pipeline["ours_pil_decode_img_s"] > 0
    assert {"first_ms_per_image", "again_ms_per_image"} <= pipeline["scan"].keys()


def test_profile_puts_kernels_after_the_steps_first_gradient_kernel_in_the_backward_pass():
    import profile_step

    def launches(t0):
        return [
            (t0 + 0, 3.0, "Default/net/conv-MatmulConv2d/Conv2D-op1", "Conv2D"),
            (t0 + 10, 1.0, "Default/net/conv-SeparableConv2d/Custom-op2", "Custom"),  # forward kernel
            (t0 + 20, 5.0, "Gradients/Default/net/Grad_Conv2D/Conv2DBackpropInput-op3", "Conv2DBackpropInput"),
            # a custom operator's bprop carries no "Gradients/" scope: placed by its launch time
            (t0 + 30, 2.0, "Default/net/conv-SeparableConv2d/Custom-op4", "Custom"),
            (t0 + 40, 0.5, "Default/optimizer-Momentum/ApplyMomentum-op5", "ApplyMomentum"),
        ]

    table = profile_step._mindspore_phases(launches(0) + launches(100), steps=2)
    dense, depthwise, optimizer = profile_step.KINDS[0], profile_step.KINDS[1], profile_step.KINDS[8]
    assert table[dense] == {"forward": 3.0, "backward": 5.0}
    assert table[depthwise] == {"forward": 1.0, "backward": 2.0}
    assert table[optimizer] == {"optimizer": 0.5}


def test_profile_tells_our_custom_operators_apart_by_their_cell():
    import profile_step

    kind = profile_step.mindspore_kind
    assert kind("Custom", "Default/net/bn-BatchNorm2d/Custom-op7") == profile_step.KINDS[3]
    assert kind("Custom", "Default/net/conv-MatmulConv2d/Custom-op8") == profile_step.KINDS[2]
    assert kind("Custom", "Default/net/sep-SeparableConv2d/Custom-op9") == profile_step.KINDS[1]
    assert kind("Custom", "Default/net/pool-MaxPool3x3Stride2/Custom-op3") == profile_step.KINDS[5]


def test_profile_tells_pytorchs_depthwise_convs_by_their_weight_shape():
    import profile_step

    dense, depthwise = profile_step.KINDS[0], profile_step.KINDS[1]
    assert profile_step.torch_kind("aten::mkldnn_convolution", [[32, 728, 6, 6], [728, 1, 3, 3], []]) == depthwise
    assert profile_step.torch_kind(
        "aten::convolution_backward", [[32, 728, 6, 6], [32, 728, 6, 6], [728, 1, 3, 3]]
    ) == (depthwise)
    assert profile_step.torch_kind("aten::mkldnn_convolution", [[32, 728, 6, 6], [728, 728, 1, 1], []]) == dense
    assert profile_step.torch_kind("aten::mkldnn_convolution", [[32, 3, 96, 96], [32, 3, 3, 3], []]) == dense
    assert profile_step.torch_kind("aten::native_batch_norm", []) == profile_step.KINDS[3]


@pytest.mark.slow
def test_profile_smoke_run_breaks_a_training_step_down_by_kind_of_work():
    import json

    from helpers import run_script

    networks = "ours,torch" if installed("torch") else "ours"
    code, out, err = run_script(
        [
            "benchmarks/profile_step.py",
            "--case",
            "train_71_b2",
            "--networks",
            networks,
            "--steps",
            "1",
            "--warmup",
            "1",
            "--json",
        ],
        timeout=600,
    )
    assert code == 0, err[-2000:]
    report = json.loads(out[out.index("{") :])
    for network in networks.split(","):
        result = report["networks"][network]
        kernels = result["kernels"]
        dense, depthwise = kernels["dense convs (1x1 pointwise, stem, shortcut)"], kernels["depthwise 3x3 convs"]
        assert dense["forward"] > 0 and dense["backward"] > 0
        assert depthwise["forward"] > 0 and depthwise["backward"] > 0
        assert result["wall_ms"] > 0
