"""Never lose a run: kill -9 and --resume equals an uninterrupted run; bad checkpoints are handled."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest

from helpers import CPU_RECIPE, QUICK, REPO, WHOLE_IMAGES, run_script
from mindcv_xception.checkpoint import CheckpointManager
from mindcv_xception.digits import make_digits_folder
from mindcv_xception.loading import CheckpointError, checkpoint_meta, read_checkpoint

# deterministic: no dropout (its random state is not part of a checkpoint), no random augmentation (a run
# resumed mid-epoch draws the crops and flips of the rest of the epoch afresh), one loader thread
RUN = [
    *QUICK,
    "--epoch_size",
    "3",
    "--drop_rate",
    "0",
    "--ema",
    "True",
    "--ema_decay",
    "0.9",
    *WHOLE_IMAGES,
]


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
    proc = subprocess.Popen(
        [sys.executable, *train_args(small_digits, resumed)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    second = os.path.join(resumed, "xception_small-e0002.ckpt")
    deadline = time.time() + 900
    while not os.path.exists(second) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # into epoch 3 (an epoch of 7 steps and validation takes about a second)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(second) and not os.path.exists(os.path.join(resumed, "xception_small-e0003.ckpt"))
    code, out, err = run_script(train_args(small_digits, resumed, "--resume"))
    assert code == 0, err[-2000:]
    return straight, resumed, out


@pytest.fixture(scope="module")
def terminated_and_resumed(small_digits, straight_and_resumed, tmp_path_factory):
    """Run C: SIGTERM once a step line of epoch 1 is logged (mid-epoch), then --resume to the end."""
    run_dir = str(tmp_path_factory.mktemp("terminated"))
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(
        [sys.executable, *train_args(small_digits, run_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if "epoch 1/3 step 5/7" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=600)
    stopped = (proc.returncode, out, err, sorted(os.listdir(run_dir)))
    code, resumed_out, resumed_err = run_script(train_args(small_digits, run_dir, "--resume"))
    assert code == 0, resumed_err[-2000:]
    return run_dir, stopped, resumed_out


@pytest.mark.slow
def test_sigterm_writes_a_mid_epoch_checkpoint_and_exits_143(terminated_and_resumed):
    run_dir, (code, out, err, files), _ = terminated_and_resumed
    assert code == 128 + signal.SIGTERM, err[-2000:]
    mid = [f for f in files if f.startswith("xception_small-e0000-s")]
    assert len(mid) == 1 and "stopped by SIGTERM at epoch 1, step" in out
    assert [line for line in err.splitlines() if line.strip()][-1].startswith("stopped: stopped by SIGTERM")


@pytest.mark.slow
def test_run_resumed_after_sigterm_ends_with_the_weights_of_an_uninterrupted_run(
    terminated_and_resumed, straight_and_resumed
):
    run_dir, _, out = terminated_and_resumed
    straight, _, _ = straight_and_resumed
    assert "epoch 0 of 3 done and 5 step(s) of epoch 1" in out or "epoch 0 of 3 done and 6 step(s) of epoch 1" in out
    a = read_checkpoint(os.path.join(straight, "last.ckpt"))
    b = read_checkpoint(os.path.join(run_dir, "last.ckpt"))
    assert checkpoint_meta(b)["global_step"] == 21
    for name, value in a.items():
        if isinstance(value, ms.Parameter):
            np.testing.assert_allclose(b[name].asnumpy(), value.asnumpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    epochs = [json.loads(line)["epoch"] for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert epochs == [1, 2, 3]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_become_a_stop_request_instead_of_ending_the_process(sig):
    from mindcv_xception.stopping import StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), sig)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
    assert stop.signum == sig
    assert signal.getsignal(sig) is not stop._handle  # the previous handler is back


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
    assert "Resuming with changed settings: lr 0.045 -> 0.001" in out
    lr = read_checkpoint(os.path.join(run_dir, "last.ckpt"))["learning_rate"].asnumpy()
    assert lr[14] == pytest.approx(0.001)


@pytest.mark.slow
def test_resume_under_another_batch_size_is_refused_naming_the_setting(straight_and_resumed, small_digits, tmp_path):
    straight, _, _ = straight_and_resumed
    code, _, err = run_script(
        train_args(
            small_digits, str(tmp_path / "r"), "--resume", os.path.join(straight, "last.ckpt"), "--batch_size", "4"
        ),
        timeout=300,
    )
    assert code == 2 and "belongs to a run with other settings (batch_size 8 -> 4)" in err


def test_checkpoint_for_another_class_count_is_refused(straight_and_resumed, tmp_path):
    straight, _, _ = straight_and_resumed
    data = str(tmp_path / "five")
    make_digits_folder(data, size=72, per_class=8)
    for label in range(5, 10):
        for split in ("train", "val"):
            for f in os.listdir(os.path.join(data, split, str(label))):
                os.remove(os.path.join(data, split, str(label), f))
            os.rmdir(os.path.join(data, split, str(label)))
    code, _, err = run_script(
        train_args(data, str(tmp_path / "r"), "--resume", os.path.join(straight, "last.ckpt")), timeout=300
    )
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
    assert [e for (e, _), _ in CheckpointManager(str(tmp_path), "m", keep_max=2).epoch_files()] == [5, 6]


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (a disk that fills up)."""

    def __init__(self, path, mode, room):
        self.f, self.room = open(path, mode), room

    def write(self, data):
        if self.room < len(data):
            self.f.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _saved_net():
    net = ms.nn.Dense(64, 64)
    return net


def test_full_disk_removes_the_partial_file_keeps_the_previous_checkpoints_and_stops(tmp_path, monkeypatch, capfd):
    from mindspore.train import serialization

    from mindcv_xception.checkpoint import CheckpointWriteError

    net = _saved_net()
    manager = CheckpointManager(str(tmp_path), "m", keep_max=5)
    manager.save(net, 1, {"epoch": 1})
    # the disk fills up inside MindSpore's own writer, half-way through the file
    monkeypatch.setattr(serialization._ckpt_fs, "create", lambda path, mode="ab": _FullDisk(path, mode, 4000))
    with pytest.raises(CheckpointWriteError, match="No space left on device.*previous checkpoints are kept"):
        manager.save(net, 2, {"epoch": 2})
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "m-e0001.ckpt"]
    assert checkpoint_meta(read_checkpoint(manager.last_path))["epoch"] == 1
    assert "Failed to save the checkpoint file" not in capfd.readouterr().err  # our one line says it


def test_read_only_run_folder_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    from mindspore.train import serialization

    from mindcv_xception.checkpoint import CheckpointWriteError

    manager = CheckpointManager(str(tmp_path), "m", keep_max=5)

    def read_only(path, *args):  # root ignores chmod: simulate the file system's refusal
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(serialization._ckpt_fs, "create", read_only)
    with pytest.raises(CheckpointWriteError, match="Read-only file system"):
        manager.save(_saved_net(), 1, {"epoch": 1})
    assert os.listdir(tmp_path) == []


def test_os_errors_of_a_script_are_one_line_and_exit_code_2(capsys):
    from mindcv_xception.cli import run_cli

    def write_metrics_on_full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl")

    assert run_cli(write_metrics_on_full_disk) == 2
    assert capsys.readouterr().err == "error: runs/x/metrics.jsonl: No space left on device\n"


def test_resume_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        CheckpointManager(str(tmp_path), "m").newest_valid()


@pytest.mark.slow
def test_loss_that_stays_non_finite_stops_the_run_and_keeps_the_last_good_checkpoint(
    straight_and_resumed, small_digits, tmp_path
):
    straight, _, _ = straight_and_resumed
    run_dir = str(tmp_path / "nan")
    os.makedirs(run_dir)
    os.link(os.path.join(straight, "xception_small-e0002.ckpt"), os.path.join(run_dir, "xception_small-e0002.ckpt"))
    code, _, err = run_script(
        train_args(small_digits, run_dir, "--resume", "--lr", "1e30", "--max_nonfinite_steps", "2")
    )
    assert code == 2 and "the loss has been non-finite for 2 steps" in err
    assert sorted(n for n in os.listdir(run_dir) if n.endswith(".ckpt")) == ["xception_small-e0002.ckpt"]
    assert checkpoint_meta(read_checkpoint(os.path.join(run_dir, "xception_small-e0002.ckpt")))["epoch"] == 2


def test_checkpoint_with_non_finite_weights_is_never_written_nor_marked_best(tmp_path):
    from mindcv_xception.checkpoint import NonFiniteWeights

    net = ms.nn.Dense(2, 2)
    manager = CheckpointManager(str(tmp_path), "m", keep_max=5)
    manager.save(net, 1, {"epoch": 1}, is_best=True)
    net.weight.set_data(ms.Tensor(np.array([[np.nan, 0], [0, 1]], np.float32)))
    with pytest.raises(NonFiniteWeights, match=r"not finite \(.*weight\).*last good checkpoint is .*m-e0001.ckpt"):
        manager.save(net, 2, {"epoch": 2}, is_best=True)
    assert sorted(os.listdir(tmp_path)) == ["best.ckpt", "last.ckpt", "m-e0001.ckpt"]
    assert checkpoint_meta(read_checkpoint(manager.best_path))["epoch"] == 1


def test_metrics_file_stays_valid_json_with_a_non_finite_loss(tmp_path):
    from mindcv_xception.trainer import write_metrics

    write_metrics(str(tmp_path), {"epoch": 1, "train_loss": float("nan"), "val_loss": float("inf")})

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    row = json.loads(open(tmp_path / "metrics.jsonl").read(), parse_constant=strict)
    assert row == {"epoch": 1, "train_loss": None, "val_loss": None}


def test_validate_json_stays_valid_json_with_a_non_finite_loss(monkeypatch, capsys):
    from mindcv_xception import validate

    monkeypatch.setattr(
        validate,
        "validate",
        lambda cfg: {"top1": 0.1, "top5": 0.5, "loss": float("nan"), "num_images": 20, "images_per_s": 3.0, "rank": 0},
    )
    assert validate.main(["--json"]) == 0

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    assert json.loads(capsys.readouterr().out, parse_constant=strict)["loss"] is None


@pytest.mark.slow
def test_epoch_ending_with_non_finite_weights_is_not_saved_and_the_run_fails(
    straight_and_resumed, small_digits, tmp_path
):
    straight, _, _ = straight_and_resumed
    run_dir = str(tmp_path / "nan_epoch")
    os.makedirs(run_dir)
    os.link(os.path.join(straight, "xception_small-e0002.ckpt"), os.path.join(run_dir, "xception_small-e0002.ckpt"))
    # the NaN stretch (7 steps) is shorter than max_nonfinite_steps: the epoch ends with NaN weights
    code, _, err = run_script(
        train_args(small_digits, run_dir, "--resume", "--lr", "1e30", "--max_nonfinite_steps", "100")
    )
    assert code == 2 and "are not finite" in err and "xception_small-e0002.ckpt" in err
    assert sorted(n for n in os.listdir(run_dir) if n.endswith(".ckpt")) == ["xception_small-e0002.ckpt"]
