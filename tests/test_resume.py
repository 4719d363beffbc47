"""Never lose a run: kill -9 and --resume equals an uninterrupted run; bad checkpoints are handled."""
import json
import os
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest

from helpers import CPU_RECIPE, QUICK, REPO, run_script
from mindcv_xception.checkpoint import CheckpointManager
from mindcv_xception.digits import make_digits_folder
from mindcv_xception.loading import CheckpointError, checkpoint_meta, read_checkpoint

# deterministic: no dropout (its random state is not part of a checkpoint), one loader thread
RUN = [*QUICK, "--epoch_size", "3", "--drop_rate", "0", "--ema", "True", "--ema_decay", "0.9"]


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("digits8"))
    make_digits_folder(out, size=72, per_class=8)  # 60 train / 20 val: 7 steps per epoch
    return out


def train_args(data, run_dir, *extra):
    return ["train.py", "--config", CPU_RECIPE, "--data_dir", data, "--ckpt_save_dir", run_dir, *RUN, *extra]


@pytest.fixture(scope="module")
def straight_and_resumed(small_digits, tmp_path_factory):
    """Run A: 3 epochs straight. Run B: killed with SIGKILL in epoch 3, then --resume."""
    straight = str(tmp_path_factory.mktemp("straight"))
    code, _, err = run_script(train_args(small_digits, straight))
    assert code == 0, err[-2000:]

    resumed = str(tmp_path_factory.mktemp("resumed"))
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, *train_args(small_digits, resumed)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = os.path.join(resumed, "xception_small-e0002.ckpt")
    deadline = time.time() + 900
    while not os.path.exists(second) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # into epoch 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(second) and not os.path.exists(os.path.join(resumed, "xception_small-e0003.ckpt"))
    code, out, err = run_script(train_args(small_digits, resumed, "--resume"))
    assert code == 0, err[-2000:]
    return straight, resumed, out


@pytest.mark.slow
def test_resume_says_where_it_continues(straight_and_resumed):
    _, _, out = straight_and_resumed
    assert "Resumed from" in out and "xception_small-e0002.ckpt: epoch 2 of 3 done" in out


@pytest.mark.slow
def test_resumed_run_trains_the_same_epochs_with_the_same_learning_rates(straight_and_resumed):
    straight, resumed, _ = straight_and_resumed
    a = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
    b = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
    assert [m["epoch"] for m in b] == [1, 2, 3]  # no epoch repeated, none past epoch_size
    assert [m["lr"] for m in a] == [m["lr"] for m in b]
    lr_a = read_checkpoint(os.path.join(straight, "last.ckpt"))["learning_rate"].asnumpy()
    lr_b = read_checkpoint(os.path.join(resumed, "last.ckpt"))["learning_rate"].asnumpy()
    np.testing.assert_array_equal(lr_a, lr_b)


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_weights_momentum_and_ema(straight_and_resumed):
    straight, resumed, _ = straight_and_resumed
    a = read_checkpoint(os.path.join(straight, "last.ckpt"))
    b = read_checkpoint(os.path.join(resumed, "last.ckpt"))
    assert checkpoint_meta(a)["global_step"] == checkpoint_meta(b)["global_step"] == 21
    compared = 0
    for name, value in a.items():
        if isinstance(value, ms.Parameter):
            # tolerance: float32 kernels on 2 threads may add in another order between processes
            np.testing.assert_allclose(b[name].asnumpy(), value.asnumpy(), rtol=1e-4, atol=1e-5, err_msg=name)
            compared += 1
    assert compared > 300 and any(n.startswith("ema.") for n in a) and any(n.startswith("accum.") for n in a)


@pytest.mark.slow
def test_resume_with_new_lr_rebases_the_remaining_schedule(straight_and_resumed, small_digits, tmp_path):
    straight, _, _ = straight_and_resumed
    run_dir = str(tmp_path / "rebase")
    os.makedirs(run_dir)
    os.link(os.path.join(straight, "xception_small-e0002.ckpt"), os.path.join(run_dir, "xception_small-e0002.ckpt"))
    code, out, err = run_script(train_args(small_digits, run_dir, "--resume", "--lr", "0.001"))
    assert code == 0, err[-2000:]
    assert "Learning rate re-based at step 14" in out and "-> 0.001" in out
    lr = read_checkpoint(os.path.join(run_dir, "last.ckpt"))["learning_rate"].asnumpy()
    assert lr[14] == pytest.approx(0.001)


@pytest.mark.slow
def test_checkpoint_for_another_class_count_is_refused(straight_and_resumed, tmp_path):
    straight, _, _ = straight_and_resumed
    data = str(tmp_path / "five")
    make_digits_folder(data, size=72, per_class=8)
    for label in range(5, 10):
        for split in ("train", "val"):
            for f in os.listdir(os.path.join(data, split, str(label))):
                os.remove(os.path.join(data, split, str(label), f))
            os.rmdir(os.path.join(data, split, str(label)))
    code, _, err = run_script(train_args(data, str(tmp_path / "r"), "--resume",
                                         os.path.join(straight, "last.ckpt")), timeout=300)
    assert code == 2 and "checkpoint for 10 classes, this run is xception_small for 5" in err


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(straight_and_resumed, tmp_path, caplog):
    straight, _, _ = straight_and_resumed
    manager = CheckpointManager(str(tmp_path), "xception_small", keep_max=5)
    for epoch in (2, 3):
        os.link(os.path.join(straight, f"xception_small-e{epoch:04d}.ckpt"), manager.epoch_path(epoch))
    newest = open(manager.epoch_path(3), "rb").read()
    os.remove(manager.epoch_path(3))
    open(manager.epoch_path(3), "wb").write(newest[: len(newest) // 3])
    path, params = manager.newest_valid()
    assert path == manager.epoch_path(2) and checkpoint_meta(params)["epoch"] == 2
    assert "is unusable" in caplog.text


def test_retention_keeps_the_newest_checkpoints_across_restarts(tmp_path):
    net = ms.nn.Dense(2, 2)
    for start in (1, 4):  # a second manager (a restarted run) sees the files of the first
        manager = CheckpointManager(str(tmp_path), "m", keep_max=2)
        for epoch in range(start, start + 3):
            manager.save(net, epoch, {"epoch": epoch})
    assert [e for e, _ in CheckpointManager(str(tmp_path), "m", keep_max=2).epoch_files()] == [5, 6]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    net = ms.nn.Dense(2, 2)
    manager = CheckpointManager(str(tmp_path), "m", keep_max=5)
    manager.save(net, 1, {"epoch": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", disk_full)
    assert manager.save(net, 2, {"epoch": 2}) is None
    assert checkpoint_meta(read_checkpoint(manager.last_path))["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "m-e0001.ckpt"]


def test_resume_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        CheckpointManager(str(tmp_path), "m").newest_valid()


@pytest.mark.slow
def test_loss_that_stays_non_finite_stops_the_run_and_keeps_the_last_good_checkpoint(
        straight_and_resumed, small_digits, tmp_path):
    straight, _, _ = straight_and_resumed
    run_dir = str(tmp_path / "nan")
    os.makedirs(run_dir)
    os.link(os.path.join(straight, "xception_small-e0002.ckpt"), os.path.join(run_dir, "xception_small-e0002.ckpt"))
    code, _, err = run_script(train_args(small_digits, run_dir, "--resume", "--lr", "1e30",
                                         "--max_nonfinite_steps", "2"))
    assert code == 2 and "the loss has been non-finite for 2 steps" in err
    assert sorted(n for n in os.listdir(run_dir) if n.endswith(".ckpt")) == ["xception_small-e0002.ckpt"]
    assert checkpoint_meta(read_checkpoint(os.path.join(run_dir, "xception_small-e0002.ckpt")))["epoch"] == 2
