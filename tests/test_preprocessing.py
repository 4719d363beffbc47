"""One evaluation preprocessing, recorded in the checkpoint: validate.py and infer.py agree on it."""

import logging
from dataclasses import replace

import mindspore as ms
import numpy as np
import pytest
from mindcv.models import create_model
from PIL import Image

from helpers import sample_photos
from mindcv_xception.checkpoint import write_atomic
from mindcv_xception.convert import keras_meta, mindcv_meta
from mindcv_xception.preprocessing import (
    KERAS,
    MINDCV,
    Preprocessing,
    PreprocessingError,
    from_record,
    preprocess,
    resolve,
)

# a fine-tuning recipe with non-default interpolation, mean and std (inputs in [0, 1])
FINETUNED = Preprocessing(75, 0.9, "bilinear", (0.0, 0.0, 0.0), (255.0, 255.0, 255.0), "RGB")


def test_normalises_with_the_records_mean_and_std():
    x = preprocess(Image.new("RGB", (90, 80), (200, 100, 50)), replace(MINDCV, image_size=71))
    expected = (np.array([200, 100, 50]) - np.array(MINDCV.mean)) / np.array(MINDCV.std)
    np.testing.assert_allclose(x[:, 35, 35], expected, rtol=1e-6)


def test_bgr_record_reverses_the_channels():
    image = Image.new("RGB", (80, 80), (200, 100, 50))
    rgb = preprocess(image, replace(FINETUNED, image_size=71))
    bgr = preprocess(image, replace(FINETUNED, image_size=71, channel_order="BGR"))
    np.testing.assert_array_equal(bgr, rgb[::-1])


def test_resize_uses_the_records_interpolation():
    photo = sample_photos()[1]
    assert not np.array_equal(
        preprocess(photo, FINETUNED), preprocess(photo, replace(FINETUNED, interpolation="bicubic"))
    )


def test_the_record_wins_over_the_fallback_and_a_flag_over_the_record_with_a_log_line(caplog):
    caplog.set_level(logging.INFO, "mindcv_xception")
    meta = {"preprocessing": FINETUNED.to_record()}
    assert resolve(meta, {}, KERAS, "k.ckpt") == FINETUNED
    prep = resolve(meta, {"interpolation": "bicubic", "mean": [0, 0, 0]}, KERAS, "k.ckpt")
    assert prep == replace(FINETUNED, interpolation="bicubic")
    overrides = [r.getMessage() for r in caplog.records if "(command line)" in r.getMessage()]
    assert overrides == [
        "Preprocessing: --interpolation bicubic (command line) overrides bilinear (recorded in k.ckpt)"
    ]  # mean 0 0 0 is what the record says: no override


def test_checkpoint_without_a_record_keeps_the_fallback_and_says_so(caplog):
    caplog.set_level(logging.INFO, "mindcv_xception")
    assert resolve({"model": "xception"}, {}, KERAS, "old.ckpt", "the recipe") == KERAS
    assert any(
        "old.ckpt records no preprocessing" in r.getMessage() and "the recipe, as before" in r.getMessage()
        for r in caplog.records
    )


def test_malformed_record_is_a_one_line_error():
    with pytest.raises(PreprocessingError, match="record has no mean"):
        from_record({"image_size": 71, "crop_pct": 1.0, "interpolation": "bilinear", "std": [1, 1, 1]})
    with pytest.raises(PreprocessingError, match="interpolation must be one of"):
        from_record({**KERAS.to_record(), "interpolation": "lanczos"})


# ---- infer.py on an image and validate.py on a folder holding it give the same logits ----


def _checkpoint(path, meta):
    """An xception_small (middle depth 1, 2 classes) saved by the project's writer with ``meta``.

    Freshly initialised BatchNorm statistics keep the logits sensitive to the input: between the two
    photos they differ by ~2x, between bilinear and bicubic resizing by ~0.5% (random statistics
    would add an input-independent offset that hides such differences).
    """
    ms.set_seed(3)
    net = create_model("xception_small", num_classes=2, middle_depth=1, bn_eps=meta.get("bn_eps", 1e-3))
    write_atomic(net, path, {**meta, "model": "xception_small", "num_classes": 2, "middle_depth": 1})
    return path


@pytest.fixture(scope="module")
def one_image_folder(tmp_path_factory):
    """Two photos, one per class folder (``val/a``, ``val/b``)."""
    root = tmp_path_factory.mktemp("one")
    for cls, photo in zip("ab", sample_photos()[1:]):
        (root / "val" / cls).mkdir(parents=True)
        photo.save(root / "val" / cls / "photo.png")
    return root


CASES = {
    "finetuned": {"class_names": ["a", "b"], "preprocessing": FINETUNED.to_record()},
    "keras": keras_meta(2, "keras:test.h5"),
    "mindcv": mindcv_meta(2, "mindcv:test.ckpt"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_infer_on_an_image_and_validate_on_its_folder_give_the_same_logits(kind, one_image_folder, tmp_path):
    from mindcv_xception.bn_folding import inference_network
    from mindcv_xception.config import parse_config
    from mindcv_xception.inference import checkpoint_preprocessing, image_logits, load_for_inference
    from mindcv_xception.validate import VALIDATE_OPTIONS, validate

    ckpt = _checkpoint(str(tmp_path / f"{kind}.ckpt"), CASES[kind])
    cfg = parse_config(
        ["--data_dir", str(one_image_folder), "--ckpt_path", ckpt, "--batch_size", "1", "--num_parallel_workers", "1"],
        "",
        VALIDATE_OPTIONS,
    )
    validated = validate(cfg, keep_logits=True)["logits"]

    net, meta = load_for_inference(ckpt)
    prep = checkpoint_preprocessing(meta)
    assert prep.to_record() == CASES[kind]["preprocessing"]
    images = [str(one_image_folder / "val" / c / "photo.png") for c in "ab"]
    inferred = image_logits(inference_network(net), images, prep)
    assert validated.shape == inferred.shape == (2, 2)
    np.testing.assert_allclose(validated, inferred, rtol=1e-4, atol=1e-4 * np.abs(inferred).max())


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_evaluation_transforms_equal_normalising_before_the_transpose_bitwise(mode):
    from mindspore.dataset import vision

    from mindcv_xception.preprocessing import decode_image, eval_transforms

    prep = replace(MINDCV, image_size=71)
    if mode == "L":
        prep = replace(prep, mean=(118.0,), std=(57.0,), channel_order="L")
    image = decode_image(sample_photos()[0].convert(mode), prep.channel_order)
    ours = image
    for op in eval_transforms(prep):
        ours = op(ours)
    classic = image
    for op in eval_transforms(prep)[:2] + [vision.Normalize(list(prep.mean), list(prep.std)), vision.HWC2CHW()]:
        classic = op(classic)
    assert ours.shape == classic.shape == (image.shape[2], 71, 71)
    np.testing.assert_array_equal(ours, classic)
