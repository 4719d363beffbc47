"""Keras Xception weights converted to our checkpoints give Keras's outputs (no network, no downloads).

The reference is Keras 3 itself (tests/keras_reference.py, run once per session in a subprocess):
``keras.applications.Xception(weights=None)`` with random, realistic weights (BatchNorm statistics
too, a few variances below 1e-3 so a wrong eps shows), saved in the official files' legacy layout
and names, and re-saved by Keras 3.
"""

import os
import shutil

import h5py
import mindspore as ms
import numpy as np
import pytest

from mindcv_xception.convert import convert_keras, keras_to_params, main
from mindcv_xception.inference import load_for_inference
from mindcv_xception.loading import checkpoint_meta, read_checkpoint


@pytest.fixture(scope="module")
def official(keras_reference):
    """The official-layout file with the top, converted once."""
    dst = str(keras_reference / "official.ckpt")
    convert_keras(str(keras_reference / "official.h5"), dst)
    return dst


def _assert_matches(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert np.isfinite(theirs).all()
    relative = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert relative < 1e-4, f"max difference {relative:.2e} of the largest output"


def _run(net, x: np.ndarray) -> np.ndarray:
    return net(ms.Tensor(x)).asnumpy()


def _folder_listing(folder) -> list:
    return sorted(os.listdir(folder))


@pytest.mark.slow
def test_official_layout_gives_keras_logits_and_top5_on_photos_at_299(official, keras_reference):
    net, _ = load_for_inference(official)
    ours = _run(net, np.load(keras_reference / "inputs.npz")["x299"])
    theirs = np.load(keras_reference / "reference.npz")["logits"]
    _assert_matches(ours, theirs)
    np.testing.assert_array_equal(np.argsort(-ours, axis=1)[:, :5], np.argsort(-theirs, axis=1)[:, :5])


@pytest.mark.slow
def test_notop_file_gives_keras_pooled_features_at_224(keras_reference, tmp_path):
    dst = str(tmp_path / "notop.ckpt")
    convert_keras(str(keras_reference / "official_notop.h5"), dst)
    net, meta = load_for_inference(dst)
    assert meta["num_classes"] == 0
    ours = _run(net, np.load(keras_reference / "inputs.npz")["x224"])
    _assert_matches(ours, np.load(keras_reference / "reference.npz")["features"])


@pytest.mark.slow
def test_reference_outputs_would_expose_a_wrong_bn_eps(keras_reference, tmp_path):
    """The parity tests are sharp: mindcv's BatchNorm eps 1e-5 instead of Keras's 1e-3 is far off."""
    from mindcv.models import create_model

    from mindcv_xception.loading import load_weights_file

    dst = str(tmp_path / "notop.ckpt")
    convert_keras(str(keras_reference / "official_notop.h5"), dst)
    net = create_model("xception", num_classes=0, bn_eps=1e-5)
    load_weights_file(net, dst)
    net.set_train(False)
    ours = _run(net, np.load(keras_reference / "inputs.npz")["x224"])
    with pytest.raises(AssertionError, match="max difference"):
        _assert_matches(ours, np.load(keras_reference / "reference.npz")["features"])


@pytest.mark.slow
def test_converted_checkpoint_carries_the_metadata_record(official):
    meta = checkpoint_meta(read_checkpoint(official))
    assert meta == {
        "model": "xception",
        "num_classes": 1000,
        "class_names": None,
        "source": "keras:official.h5",
        "preprocessing": {
            "image_size": 299,
            "crop_pct": 0.8975,
            "interpolation": "bicubic",
            "mean": [127.5] * 3,
            "std": [127.5] * 3,
            "channel_order": "RGB",
        },
    }


@pytest.mark.slow
@pytest.mark.parametrize("resave", ["resave.weights.h5", "resave.h5"])
def test_keras3_resave_converts_to_the_same_weights_as_the_official_layout(keras_reference, resave):
    expected, _ = keras_to_params(str(keras_reference / "official.h5"))
    got, classes = keras_to_params(str(keras_reference / resave))
    assert classes == 1000
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


@pytest.mark.slow
def test_ten_class_keras_model_converts_with_its_head_and_gives_keras_logits(keras_reference, tmp_path):
    dst = str(tmp_path / "ten.ckpt")
    meta = convert_keras(str(keras_reference / "ten.weights.h5"), dst)
    assert meta["num_classes"] == 10
    net, _ = load_for_inference(dst)
    ours = _run(net, np.load(keras_reference / "inputs.npz")["x96"])
    _assert_matches(ours, np.load(keras_reference / "reference.npz")["ten_logits"])


@pytest.mark.slow
@pytest.mark.parametrize("saved", ["nested.weights.h5", "nested.h5"])
def test_xception_nested_in_a_users_model_with_its_own_head_gives_keras_logits(keras_reference, tmp_path, saved):
    dst = str(tmp_path / "nested.ckpt")
    assert convert_keras(str(keras_reference / saved), dst)["num_classes"] == 3
    net, _ = load_for_inference(dst)
    ours = _run(net, np.load(keras_reference / "inputs.npz")["x96"])
    _assert_matches(ours, np.load(keras_reference / "reference.npz")["nested_logits"])


@pytest.mark.slow
def test_shortcut_layers_listed_before_a_blocks_separable_convs_map_the_same(keras_reference, tmp_path):
    src = str(tmp_path / "shortcut_first.h5")
    shutil.copy(keras_reference / "official.h5", src)
    with h5py.File(src, "r+") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        for k, block in enumerate((2, 3, 4, 13), 1):
            for shortcut in (f"conv2d_{k}", f"batch_normalization_{k}"):
                names.remove(shortcut)
                names.insert(names.index(f"block{block}_sepconv1"), shortcut)
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
    expected, _ = keras_to_params(str(keras_reference / "official.h5"))
    got, _ = keras_to_params(src)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


# ---- files that cannot be converted: one-line error, exit code 2, no output left behind ----


def _convert_fails(capsys, src: str, dst: str, *extra: str) -> str:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    before = _folder_listing(os.path.dirname(dst))
    assert main(["keras", src, dst, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert _folder_listing(os.path.dirname(dst)) == before  # no output, no temporary file
    return err


@pytest.mark.slow
def test_swapped_layers_are_an_error_naming_the_layer(keras_reference, tmp_path, capsys):
    src = str(tmp_path / "swapped.h5")
    shutil.copy(keras_reference / "official.h5", src)
    with h5py.File(src, "r+") as f:
        names = list(f.attrs["layer_names"])
        i, j = names.index(b"block6_sepconv1"), names.index(b"block6_sepconv2")
        names[i], names[j] = names[j], names[i]
        f.attrs["layer_names"] = np.array(names)
    err = _convert_fails(capsys, src, str(tmp_path / "out" / "x.ckpt"))
    assert "block6_sepconv2" in err and "out of order" in err


def test_file_of_another_network_is_refused(tmp_path, capsys):
    src = str(tmp_path / "other.h5")
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = np.array([b"conv1", b"fc"])
        layers = (("conv1", {"kernel": (7, 7, 3, 64), "bias": (64,)}), ("fc", {"kernel": (64, 10), "bias": (10,)}))
        for name, shapes in layers:
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/{w}:0".encode() for w in shapes])
            for w, shape in shapes.items():
                group.create_dataset(f"{name}/{w}:0", data=np.zeros(shape, np.float32))
    err = _convert_fails(capsys, src, str(tmp_path / "out" / "x.ckpt"))
    assert "conv1" in err and "Xception" in err


@pytest.mark.slow
def test_head_of_more_than_one_dense_layer_is_refused(keras_reference, tmp_path, capsys):
    src = str(tmp_path / "two_dense.h5")
    shutil.copy(keras_reference / "official.h5", src)
    with h5py.File(src, "r+") as f:
        group = f.create_group("extra_dense")
        group.attrs["weight_names"] = np.array([b"extra_dense/kernel:0", b"extra_dense/bias:0"])
        group.create_dataset("extra_dense/kernel:0", data=np.zeros((1000, 5), np.float32))
        group.create_dataset("extra_dense/bias:0", data=np.zeros((5,), np.float32))
        f.attrs["layer_names"] = np.array(list(f.attrs["layer_names"]) + [b"extra_dense"])
    err = _convert_fails(capsys, src, str(tmp_path / "out" / "x.ckpt"))
    assert "after Xception's last one (predictions, extra_dense)" in err


def test_file_that_is_not_hdf5_is_refused(tmp_path, capsys):
    src = tmp_path / "notes.h5"
    src.write_text("not weights\n")
    assert "not a readable HDF5 file" in _convert_fails(capsys, str(src), str(tmp_path / "out" / "x.ckpt"))


@pytest.mark.slow
def test_truncated_file_is_refused(keras_reference, tmp_path, capsys):
    src = tmp_path / "cut.h5"
    with open(keras_reference / "official.h5", "rb") as f:
        src.write_bytes(f.read(30_000_000))
    assert "truncated" in _convert_fails(capsys, str(src), str(tmp_path / "out" / "x.ckpt"))


@pytest.mark.slow
def test_notop_file_for_a_model_with_a_head_is_refused_with_the_fix(keras_reference, tmp_path, capsys):
    err = _convert_fails(
        capsys, str(keras_reference / "official_notop.h5"), str(tmp_path / "out" / "x.ckpt"), "--num_classes", "1000"
    )
    assert "no-top file" in err and "--num_classes 0" in err


@pytest.mark.slow
def test_existing_output_is_left_untouched_when_conversion_fails(keras_reference, tmp_path, capsys):
    dst = tmp_path / "x.ckpt"
    dst.write_bytes(b"previous")
    _convert_fails(capsys, str(keras_reference / "official_notop.h5"), str(dst), "--num_classes", "1000", "--force")
    assert dst.read_bytes() == b"previous"


def _one_layer_file(path, kernel_shape):
    """A legacy-layout .h5 whose first layer is Xception's stem conv, with a kernel of ``kernel_shape``."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"block1_conv1"])
        group = f.create_group("block1_conv1")
        group.attrs["weight_names"] = np.array([b"block1_conv1/kernel:0"])
        group.create_dataset("block1_conv1/kernel:0", data=np.zeros(kernel_shape, np.float32))


def test_keras_layer_of_an_unexpected_rank_is_a_one_line_error(tmp_path, capsys):
    src = str(tmp_path / "flat.h5")
    _one_layer_file(src, (3, 3, 32))  # a conv kernel must be 4-D
    err = _convert_fails(capsys, src, str(tmp_path / "out" / "x.ckpt"))
    assert "block1_conv1" in err and "kernel (3, 3, 32)" in err and "not those of a Keras Conv2D" in err


def test_convert_refuses_to_write_over_its_source(tmp_path, capsys):
    src = tmp_path / "weights.h5"
    _one_layer_file(str(src), (3, 3, 3, 32))
    before = src.read_bytes()
    assert main(["keras", str(src), str(src)]) == 2
    assert "is the source file itself" in capsys.readouterr().err and src.read_bytes() == before


def test_convert_requires_force_to_replace_an_existing_output(tmp_path, capsys):
    src, dst = tmp_path / "weights.h5", tmp_path / "x.ckpt"
    _one_layer_file(str(src), (3, 3, 3, 32))
    dst.write_bytes(b"previous")
    assert main(["keras", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists; pass --force to replace it" in err
    assert dst.read_bytes() == b"previous"


def test_convert_into_a_folder_writes_inside_it(keras_reference, tmp_path, capsys):
    assert main(["keras", str(keras_reference / "official_notop.h5"), str(tmp_path)]) == 0
    assert os.listdir(tmp_path) == ["official_notop.ckpt"]
    assert f"wrote {tmp_path / 'official_notop.ckpt'}" in capsys.readouterr().out
