"""create_model('xception', pretrained=True): cached checkpoint, or download + md5 + convert + cache.

No network: the "download" is a file:// URL to Keras-layout files made by tests/keras_reference.py.
"""

import io
import logging
import os
import pathlib
import re
import sys

import numpy as np
import pytest
from mindcv.models import create_model

from mindcv_xception.convert import convert_keras
from mindcv_xception.loading import read_checkpoint
from mindcv_xception.models import default_cfgs
from mindcv_xception.weights import CACHE_ENV, PretrainedError, download, file_md5


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def _serve(monkeypatch, keras_reference, md5=None, md5_notop=None):
    """Point the download addresses at local files (file:// URLs), with their md5 unless given."""
    cfg = default_cfgs["xception"]
    top, notop = keras_reference / "official.h5", keras_reference / "official_notop.h5"
    monkeypatch.setitem(cfg, "url", pathlib.Path(top).as_uri())
    monkeypatch.setitem(cfg, "md5", md5 or file_md5(str(top)))
    monkeypatch.setitem(cfg, "url_notop", pathlib.Path(notop).as_uri())
    monkeypatch.setitem(cfg, "md5_notop", md5_notop or file_md5(str(notop)))


def _stem(net) -> np.ndarray:
    return net.stem[0].conv.weight.asnumpy()


def test_the_official_address_and_checksums_are_registered():
    cfg = default_cfgs["xception"]
    assert cfg["url"].endswith("keras-applications/xception/xception_weights_tf_dim_ordering_tf_kernels.h5")
    assert cfg["md5"] == "0a58e3b7378bc2990ea3b43d5981f1f6" and cfg["md5_notop"] == "b0042744bf5b25fce3cb969f33bebb97"


def test_download_shows_its_progress_and_rate_on_a_terminal_only(tmp_path, monkeypatch, capsys):
    src = tmp_path / "official.h5"
    src.write_bytes(os.urandom(3 << 20))
    download(src.as_uri(), str(tmp_path / "quiet" / "w.h5"))
    assert capsys.readouterr().err == ""  # logs and CI: no progress bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    download(src.as_uri(), str(tmp_path / "shown" / "w.h5"))
    shown = terminal.getvalue()
    assert "w.h5" in shown and "3.00M/3.00M" in shown and re.search(r"[\d.]+[kMG]?B/s", shown), shown


@pytest.mark.slow
def test_pre_seeded_cache_is_used_without_downloading(cache, keras_reference, monkeypatch):
    convert_keras(str(keras_reference / "official.h5"), str(cache / "xception_keras_imagenet.ckpt"))
    monkeypatch.setitem(default_cfgs["xception"], "url", (keras_reference / "absent.h5").as_uri())
    net = create_model("xception", pretrained=True)
    cached = read_checkpoint(str(cache / "xception_keras_imagenet.ckpt"))
    np.testing.assert_array_equal(_stem(net), cached["stem.0.conv.weight"].asnumpy())


@pytest.mark.slow
def test_download_with_a_wrong_md5_is_refused_and_nothing_is_kept(cache, keras_reference, monkeypatch):
    _serve(monkeypatch, keras_reference, md5="0" * 32)
    with pytest.raises(PretrainedError, match="expected 0{32}"):
        create_model("xception", pretrained=True)
    assert not cache.exists() or os.listdir(cache) == []


@pytest.mark.slow
def test_download_with_the_right_md5_is_converted_cached_and_loaded(cache, keras_reference, monkeypatch):
    _serve(monkeypatch, keras_reference)
    net = create_model("xception", pretrained=True)
    cached = read_checkpoint(str(cache / "xception_keras_imagenet.ckpt"))
    np.testing.assert_array_equal(_stem(net), cached["stem.0.conv.weight"].asnumpy())
    np.testing.assert_array_equal(net.classifier.weight.asnumpy(), cached["classifier.weight"].asnumpy())


@pytest.mark.slow
def test_other_class_count_takes_the_notop_weights_and_keeps_a_new_head(cache, keras_reference, monkeypatch, caplog):
    _serve(monkeypatch, keras_reference, md5="0" * 32)  # the top file must not be used
    with caplog.at_level(logging.INFO):
        net = create_model("xception", pretrained=True, num_classes=10)
    assert net.classifier.weight.shape == (10, 2048)
    assert "new 10-class head" in caplog.text
    notop = read_checkpoint(str(cache / "xception_keras_imagenet_notop.ckpt"))
    np.testing.assert_array_equal(_stem(net), notop["stem.0.conv.weight"].asnumpy())


@pytest.mark.slow
def test_unreachable_address_names_the_offline_fix(cache, keras_reference, monkeypatch):
    monkeypatch.setitem(default_cfgs["xception"], "url", (keras_reference / "absent.h5").as_uri())
    with pytest.raises(PretrainedError, match=f"could not download .*set {CACHE_ENV}"):
        create_model("xception", pretrained=True)


def _script_error(capsys, fn) -> str:
    """Run ``fn`` as a script body (cli.run_cli); assert exit code 2 and one line; return it."""
    from mindcv_xception.cli import run_cli

    assert run_cli(fn) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_pretrained_weights_unavailable_offline_stop_a_script_with_one_line(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(default_cfgs["xception"], "url_notop", (tmp_path / "offline.h5").as_uri())
    err = _script_error(capsys, lambda: create_model("xception", pretrained=True, num_classes=10))
    assert "could not download" in err and CACHE_ENV in err


def test_wrong_md5_in_the_cache_stops_a_script_with_one_line(cache, capsys):
    cache.mkdir()
    (cache / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"not the official file")
    err = _script_error(capsys, lambda: create_model("xception", pretrained=True, num_classes=10))
    assert "does not have the official md5" in err and "delete it" in err
