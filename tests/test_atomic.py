"""Files written whole or not at all (atomic.py), and every writer of the package going through it."""

import os

import mindspore as ms
import numpy as np
import pytest

from mindcv_xception.atomic import atomic_output


def record_syncs_and_renames(monkeypatch):
    """Log ('fsync', path) and ('replace', path) calls, in order (the calls still happen)."""
    events, fsync, replace = [], os.fsync, os.replace

    def logged_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def logged_replace(src, dst):
        events.append(("replace", os.path.abspath(dst)))
        return replace(src, dst)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    return events


def test_target_appears_only_when_the_body_finishes(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_output(str(target)) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["out.bin"]


def test_failure_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.ckpt"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="No space"):
        with atomic_output(str(target), suffix=".ckpt") as tmp:
            assert tmp.endswith(".ckpt")
            with open(tmp, "wb") as f:
                f.write(b"ne")
            raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.ckpt"]


def test_temporary_file_is_synced_to_disk_before_it_replaces_the_target(tmp_path, monkeypatch):
    events = record_syncs_and_renames(monkeypatch)
    target = str(tmp_path / "out.bin")
    with atomic_output(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"x")
    assert events[:2] == [("fsync", os.path.abspath(tmp)), ("replace", target)]


def test_converted_weights_are_synced_to_disk_before_they_replace_the_destination(tmp_path, monkeypatch):
    from mindcv_xception.convert import _target, save_converted

    params = {p.name: p.asnumpy() for p in _target(0).get_parameters()}
    events = record_syncs_and_renames(monkeypatch)
    dst = str(tmp_path / "converted.ckpt")
    save_converted(params, {"model": "xception", "num_classes": 0, "class_names": None}, dst)
    renamed = events.index(("replace", dst))  # the old save renamed without syncing
    assert any(kind == "fsync" and path.endswith(".ckpt") for kind, path in events[:renamed])
    assert os.listdir(tmp_path) == ["converted.ckpt"]
    assert np.array_equal(ms.load_checkpoint(dst)["stem.0.conv.weight"].asnumpy(), params["stem.0.conv.weight"])
