"""A run folder belongs to one run: lock, no fresh start over another run, no resume under other settings."""

import logging
import os
import subprocess
import sys

import pytest

from helpers import CPU_RECIPE, run_script
from mindcv_xception.checkpoint import CheckpointManager
from mindcv_xception.config import resume_differences
from mindcv_xception.run_folder import RunFolderError, RunLock, claim_for_new_run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def train_cmd(run_dir, *extra):
    return ["train.py", "--config", CPU_RECIPE, "--data_dir", "/nonexistent/data", "--ckpt_save_dir", run_dir, *extra]


def test_fresh_run_over_another_runs_checkpoints_is_refused_in_one_line(tmp_path):
    from mindcv_xception.digits import make_digits_folder

    make_digits_folder(str(tmp_path / "digits"), size=72, per_class=5, val_fraction=0.2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    open(run_dir / "xception_small-e0003.ckpt", "wb").close()
    code, _, err = run_script(
        [
            "train.py",
            "--config",
            CPU_RECIPE,
            "--data_dir",
            str(tmp_path / "digits"),
            "--batch_size",
            "2",
            "--ckpt_save_dir",
            str(run_dir),
        ],
        timeout=300,
    )
    assert code == 2 and "holds the checkpoints of another run" in err and "--overwrite True" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert os.path.exists(run_dir / "xception_small-e0003.ckpt")


def test_overwrite_deletes_the_previous_runs_checkpoints_and_metrics(tmp_path):
    for name in ("m-e0001.ckpt", "m-e0002.ckpt", "last.ckpt", "metrics.jsonl", "config.yaml"):
        open(tmp_path / name, "w").close()
    claim_for_new_run(str(tmp_path), [str(tmp_path / "m-e0001.ckpt"), str(tmp_path / "m-e0002.ckpt")], True)
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_second_concurrent_run_is_refused_in_one_line(tmp_path, live_pid):
    (tmp_path / ".lock").write_text(f"{live_pid}\n")
    code, _, err = run_script(train_cmd(str(tmp_path)), timeout=300)
    assert code == 2 and f"in use by another run (pid {live_pid}" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    pid = dead_pid()
    (tmp_path / ".lock").write_text(f"{pid}\n")
    with caplog.at_level(logging.WARNING), RunLock(str(tmp_path)):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert f"taking over the lock of pid {pid}" in caplog.text
    assert not (tmp_path / ".lock").exists()  # released at the end


def test_lock_held_by_a_live_process_refuses(tmp_path, live_pid):
    (tmp_path / ".lock").write_text(f"{live_pid}\n")
    with pytest.raises(RunFolderError, match="in use by another run"):
        RunLock(str(tmp_path)).acquire()
    assert (tmp_path / ".lock").read_text().strip() == str(live_pid)


def test_start_up_removes_only_the_temporary_files_of_dead_processes(tmp_path, live_pid):
    in_flight = tmp_path / f"m-e0002.ckpt.tmp-{live_pid}.ckpt"
    stale = tmp_path / f"m-e0001.ckpt.tmp-{dead_pid()}.ckpt"
    in_flight.write_bytes(b"x")
    stale.write_bytes(b"x")
    CheckpointManager(str(tmp_path), "m")
    assert in_flight.exists() and not stale.exists()


def test_resume_differences_split_settings_that_cannot_change_from_those_that_can():
    saved = {"model": "xception_small", "batch_size": 8, "lr": 0.045, "log_interval": 5}
    now = {"model": "xception_small", "batch_size": 16, "lr": 0.001, "log_interval": 5}
    fixed, other = resume_differences(saved, now)
    assert fixed == ["batch_size 8 -> 16"] and other == ["lr 0.045 -> 0.001"]
