"""Preprocessing that belongs to the weights, and infer.py's top-5 output."""

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from helpers import sample_photos, save_small, small_net
from mindcv_xception.inference import collect_images, imagenet_class_names, load_for_inference, main
from mindcv_xception.preprocessing import KERAS, preprocess


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name, photo in zip(("astronaut.png", "chelsea.jpg"), sample_photos()):
        photo.save(folder / name)
    return folder


def _run(capsys, *argv):
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_preprocess_gives_chw_float32_in_minus_one_to_one():
    x = preprocess(sample_photos()[1], KERAS)
    assert x.shape == (3, 299, 299) and x.dtype == np.float32
    assert -1.0 <= x.min() < 0 < x.max() <= 1.0


def test_preprocess_scales_0_to_minus_1_and_255_to_1():
    assert np.all(preprocess(Image.new("RGB", (400, 300), (0, 0, 0)), KERAS) == -1.0)
    assert np.all(preprocess(Image.new("RGB", (400, 300), (255, 255, 255)), KERAS) == 1.0)


def test_preprocess_resizes_the_shorter_side_to_333_and_crops_the_central_299():
    # a white 299 x 299 square in the middle of a black 500 x 333 image: exactly what the crop keeps
    image = Image.new("RGB", (500, 333), (0, 0, 0))
    image.paste((255, 255, 255), (100, 17, 399, 316))
    x = preprocess(image, KERAS)
    assert np.all(x == 1.0)


def test_preprocess_turns_grayscale_into_rgb():
    x = preprocess(sample_photos()[0].convert("L"), replace(KERAS, image_size=96))
    assert x.shape == (3, 96, 96)
    np.testing.assert_array_equal(x[0], x[1])


def test_directories_are_searched_for_every_image_type_training_reads(tmp_path):
    for name in ("a.ppm", "b.pgm", "c.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.rsplit("/", 1)[1] for p in collect_images([str(tmp_path)])] == ["a.ppm", "b.pgm", "c.png"]


def test_imagenet_class_names_come_from_the_package_in_label_order():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0].startswith("tench") and "tabby" in names[281]


def test_prints_top5_imagenet_names_for_a_1000_class_checkpoint(tmp_path, photo_dir, capsys):
    ckpt = save_small(str(tmp_path / "imagenet.ckpt"), 1000)
    code, out, _ = _run(capsys, "--ckpt_path", ckpt, "--image_size", "96", str(photo_dir / "chelsea.jpg"))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].endswith("chelsea.jpg") and len(lines) == 6
    names = imagenet_class_names()
    for line in lines[1:]:
        index = int(line.rsplit("(", 1)[1].rstrip(")"))
        assert names[index] in line


def test_json_output_uses_the_checkpoints_class_names_and_sorted_probabilities(tmp_path, photo_dir, capsys):
    ckpt = save_small(str(tmp_path / "pets.ckpt"), 6, class_names=["cat", "dog", "fish", "bird", "frog", "newt"])
    code, out, _ = _run(capsys, "--ckpt_path", ckpt, "--image_size", "96", "--json", str(photo_dir))
    assert code == 0
    results = json.loads(out)["results"]
    assert [r["image"].rsplit("/", 1)[1] for r in results] == ["astronaut.png", "chelsea.jpg"]
    for result in results:
        probs = [e["probability"] for e in result["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        assert {e["name"] for e in result["top"]} <= {"cat", "dog", "fish", "bird", "frog", "newt"}


def test_checkpoint_without_metadata_takes_model_flag_and_class_count_from_its_classifier(tmp_path):
    ckpt = save_small(str(tmp_path / "plain.ckpt"), 7, meta=False)
    net, meta = load_for_inference(ckpt, model="xception_small")
    assert meta["num_classes"] == 7 and net.classifier.weight.shape == (7, 1024)


def test_ema_weights_are_used_when_present(tmp_path):
    ema = small_net(4, seed=1)
    ckpt = save_small(str(tmp_path / "ema.ckpt"), 4, ema_of=ema)
    net, _ = load_for_inference(ckpt)
    np.testing.assert_array_equal(net.classifier.weight.asnumpy(), ema.classifier.weight.asnumpy())
    np.testing.assert_array_equal(net.stem[0].conv.weight.asnumpy(), ema.stem[0].conv.weight.asnumpy())


def test_corrupt_image_is_a_one_line_error_naming_the_file(tmp_path, photo_dir, capsys):
    ckpt = save_small(str(tmp_path / "x.ckpt"), 3)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes((photo_dir / "chelsea.jpg").read_bytes()[:500])
    code, out, err = _run(capsys, "--ckpt_path", ckpt, "--image_size", "96", str(bad))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "broken.jpg" in err and "not a readable image" in err
