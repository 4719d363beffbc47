"""mindcv's AutoAugment and RandAugment run as C++ operations: the same policies, operations and arguments."""

import logging

import numpy as np
import pytest
from mindcv.data.auto_augment import NAME_TO_OP, AugmentOp, auto_augment_transform, rand_augment_transform
from mindspore.dataset.transforms import RandomChoice
from mindspore.dataset.vision import Inter

from mindcv_xception.augment import (
    QUANTILES,
    _op_builders,
    level_arguments,
    magnitudes,
    native_auto_augment,
    native_operation,
    native_rand_augment,
    stated_std,
    with_native_auto_augment,
)

HPARAMS = dict(img_mean=(128, 128, 128), interpolation=Inter.BICUBIC, translate_const=43)


@pytest.fixture(scope="module")
def photo():
    from PIL import Image

    from helpers import sample_photos

    return np.asarray(sample_photos()[0].convert("RGB").resize((64, 48), Image.BILINEAR))


def _mindcv_policy(name="autoaug"):
    return auto_augment_transform(name, dict(HPARAMS))


POSTERIZE = {"Posterize", "PosterizeIncreasing", "PosterizeOriginal"}  # mindcv's differs: see the posterize test


@pytest.mark.parametrize("name", sorted(set(_op_builders()) - POSTERIZE))
def test_each_operation_is_built_with_the_arguments_mindcv_applies(name, photo):
    op = AugmentOp(name, prob=1.0, magnitude=7, hparams=dict(HPARAMS, magnitude_std=0))
    builders = _op_builders()
    for args in level_arguments(op, 7):
        ours = builders[name](*args, op.kwargs["fill_value"], op.kwargs["resample"])(photo)
        theirs = NAME_TO_OP[name](photo, *args, **op.kwargs)
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{name}{args}")


def test_random_sign_of_a_level_gives_both_signs_equally():
    rotate = AugmentOp("Rotate", magnitude=9, hparams=dict(HPARAMS))
    assert sorted(level_arguments(rotate, 9)) == [(-27.0,), (27.0,)]
    assert level_arguments(AugmentOp("Solarize", magnitude=5, hparams=dict(HPARAMS)), 5) == [(127,)]


def test_posterize_keeps_the_bits_the_policy_names(photo):
    # PosterizeOriginal at magnitude 8 keeps 7 bits (the AutoAugment paper, timm); mindcv 0.3.0 keeps 1
    op = AugmentOp("PosterizeOriginal", prob=1.0, magnitude=8, hparams=dict(HPARAMS, magnitude_std=0))
    assert level_arguments(op, 8) == [(7,)]
    ours = native_operation(op)(photo)
    assert np.all(ours % 2 == 0) and np.abs(ours.astype(int) - photo).max() == 1
    assert len(np.unique(NAME_TO_OP["PosterizeOriginal"](photo, 7, **op.kwargs))) <= 2  # mindcv's


def _assert_draws_every_level(native, op):
    """``native`` chooses among one operation per (quantile of the magnitude, sign of the level)."""
    choices = native.transforms if isinstance(native, RandomChoice) else [native]
    expected = 1 if op.level_fn is None else QUANTILES * len(level_arguments(op, op.magnitude))
    assert len(choices) == expected, op.name


@pytest.mark.parametrize("name", ["autoaug", "autoaugr"])
def test_policy_has_mindcvs_sub_policies_probabilities_and_operations(name):
    theirs = _mindcv_policy(name)
    ours = native_auto_augment(theirs)
    assert len(ours.policy) == len(theirs.policy) == 25
    for our_sub, their_sub in zip(ours.policy, theirs.policy):
        assert [p for _, p in our_sub] == [op.prob for op in their_sub]
        for (native, _), op in zip(our_sub, their_sub):
            _assert_draws_every_level(native, op)


@pytest.mark.parametrize("spec", ["randaug-m9-mstd0.5", "randaug-m7-n3-mstd0.5-inc1"])
def test_rand_augment_draws_its_layers_uniformly_from_mindcvs_operations(spec):
    theirs = rand_augment_transform(spec, dict(HPARAMS))
    ours = native_rand_augment(theirs)
    assert len(ours.transforms) == theirs.num_layers
    for layer in ours.transforms:  # one uniform choice per layer, with replacement, as mindcv
        assert isinstance(layer, RandomChoice) and len(layer.transforms) == len(theirs.ops)
        for apply, op in zip(layer.transforms, theirs.ops):
            assert apply.prob == op.prob == 0.5
            (native,) = apply.transforms
            _assert_draws_every_level(native, op)


def test_a_stated_magnitude_noise_is_used_where_mindcv_keeps_its_default(caplog, monkeypatch):
    from mindcv_xception import augment

    assert stated_std("autoaug-mstd1.0") == 1.0 and stated_std("randaug-m9-mstd101") == float("inf")
    assert stated_std("autoaug") is None and stated_std(None) is None
    theirs = auto_augment_transform("autoaug-mstd1.0", dict(HPARAMS))
    assert theirs.policy[0][1].magnitude_std == 0.5  # mindcv 0.3.0 keeps its default
    monkeypatch.setattr(augment, "_said", set())
    with caplog.at_level(logging.INFO, logger="mindcv_xception.augment"):
        (ours,) = with_native_auto_augment([theirs], "autoaug-mstd1.0")
    rotate = ours.policy[0][1][0]  # sub-policy 0: PosterizeOriginal 8, Rotate 9
    degrees = sorted(min(d, 360 - d) for d in (choice.degrees[0] % 360 for choice in rotate.transforms))  # |angle|
    spread = max(magnitudes(9, 1.0, 10)) - min(magnitudes(9, 1.0, 10))
    assert degrees[-1] - degrees[0] == pytest.approx(3 * spread)  # 3 degrees a magnitude step
    assert "magnitude noise 1 as 'autoaug-mstd1.0' states" in caplog.text


def test_magnitude_noise_is_drawn_from_equally_likely_quantiles():
    draws = np.array(magnitudes(5, 0.5, 10))
    assert len(draws) == QUANTILES and np.all(np.diff(draws) > 0)
    assert abs(draws.mean() - 5) < 1e-9 and 0.47 < draws.std() < 0.5
    assert max(magnitudes(9.8, 0.5, 10)) == 10 and min(magnitudes(0.2, 0.5, 10)) == 0  # clipped as mindcv does
    assert magnitudes(6, 0, 10) == [6.0]
    uniform = np.array(magnitudes(8, float("inf"), 10))  # mindcv: U(0, magnitude)
    assert uniform.min() > 0 and uniform.max() < 8 and abs(uniform.mean() - 4) < 1e-9


@pytest.mark.parametrize("spec", ["autoaug", "randaug-m9-mstd0.5"])
def test_draws_repeat_under_the_same_pipeline_seed(spec, photo):
    import mindspore.dataset as ds

    if spec.startswith("randaug"):
        policy = native_rand_augment(rand_augment_transform(spec, dict(HPARAMS)))
    else:
        policy = native_auto_augment(_mindcv_policy(spec))

    def augmented(seed):
        ds.config.set_seed(seed)
        images = np.stack([photo] * 12)
        dataset = ds.NumpySlicesDataset(images, ["image"], shuffle=False).map(policy, "image", num_parallel_workers=1)
        return np.stack([row[0] for row in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)])

    first, again, other = augmented(7), augmented(7), augmented(8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    changed = [not np.array_equal(image, photo) for image in first]
    assert 3 <= sum(changed) <= 12  # most images are changed, not all in the same way
    assert len({image.tobytes() for image in first}) > 3


def test_training_transforms_run_autoaugment_as_cpp_and_say_so_once(tmp_path, caplog, monkeypatch):
    from mindcv_xception import augment
    from mindcv_xception.config import parse_config
    from mindcv_xception.data import train_transforms

    cfg = parse_config(["--data_dir", str(tmp_path), "--image_resize", "96", "--auto_augment", "autoaug"])
    monkeypatch.setattr(augment, "_said", set())
    with caplog.at_level(logging.INFO, logger="mindcv_xception.augment"):
        kinds = [type(op).__name__ for op in train_transforms(cfg)]
        train_transforms(cfg)  # the next epoch's pipeline: said once
    assert "RandomSelectSubpolicy" in kinds and "AutoAugment" not in kinds
    assert caplog.text.count("posterize keeps the bits the policy names") == 1
    for policy, kind in (("randaug-m9-mstd0.5", "Compose"), ("randaug-m9-w0", "RandAugment"), ("3a", "AutoAugment")):
        cfg = parse_config(["--data_dir", str(tmp_path), "--image_resize", "96", "--auto_augment", policy])
        assert kind in [type(op).__name__ for op in train_transforms(cfg)], policy  # no C++ twin: mindcv's own
