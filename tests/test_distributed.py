"""msrun data parallel on CPU: two real processes (MCCL), not mocks."""

import glob
import json
import os
import re
import shutil
import socket
import sys

import pytest

from helpers import CPU_RECIPE, QUICK, REPO, keep_val_images, run_script, strip_noise

pytestmark = pytest.mark.slow  # msrun runs of train.py and validate.py

MSRUN = os.path.join(os.path.dirname(sys.executable), "msrun")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msrun(args, log_dir, timeout=900):
    """``msrun --worker_num 2 --local_worker_num 2 python ARGS``; returns (returncode, worker logs)."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], PYTHONPATH=REPO)
    import subprocess

    proc = subprocess.run(
        [
            MSRUN,
            "--worker_num",
            "2",
            "--local_worker_num",
            "2",
            "--master_port",
            str(free_port()),
            "--log_dir",
            log_dir,
            "--join",
            "True",
            "python",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    logs = [strip_noise(open(p).read()) for p in sorted(glob.glob(os.path.join(log_dir, "worker_*.log")))]
    return proc.returncode, logs


@pytest.fixture(scope="module")
def two_process_run(digits_dir, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("dp_run"))
    log_dir = str(tmp_path_factory.mktemp("dp_logs"))
    code, logs = msrun(
        [
            "train.py",
            "--config",
            CPU_RECIPE,
            "--data_dir",
            digits_dir,
            "--epoch_size",
            "2",
            "--ckpt_save_dir",
            run_dir,
            "--distribute",
            "True",
            *QUICK,
        ],
        log_dir,
    )
    assert code == 0, "\n".join(log[-3000:] for log in logs)
    return run_dir, logs


def test_both_ranks_finish_with_the_same_weights(two_process_run):
    _, logs = two_process_run
    assert len(logs) == 2
    digests = [re.search(r"Final trainable weights digest on rank (\d): (\w+)", log) for log in logs]
    assert all(digests) and {d.group(1) for d in digests} == {"0", "1"}
    assert digests[0].group(2) == digests[1].group(2)


def test_effective_lr_doubles_with_two_processes_at_the_same_per_device_batch(two_process_run):
    _, logs = two_process_run
    assert "Global batch 16 (= 8 x 2 processes x 1 accumulation); lr 0.045 -> effective 0.0225" in logs[0]


def test_each_rank_sees_half_of_the_epoch(two_process_run):
    _, logs = two_process_run
    # 160 training images, 80 per rank, batches of 8: 10 steps per epoch on each rank
    assert "2 process(es); 160 train / 40 val images, 10 classes, 10 steps/epoch" in logs[0]


def test_checkpoints_and_metrics_are_written_once(two_process_run):
    run_dir, _ = two_process_run
    metrics = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert sorted(n for n in os.listdir(run_dir) if n.endswith(".ckpt")) == [
        "best.ckpt",
        "last.ckpt",
        "xception_small-e0001.ckpt",
        "xception_small-e0002.ckpt",
    ]


def test_two_process_validation_counts_every_image_once(two_process_run, digits_dir, tmp_path):
    run_dir, _ = two_process_run
    data = str(tmp_path / "d")
    shutil.copytree(digits_dir, data)
    keep_val_images(os.path.join(data, "val"), 23)  # divisible neither by 2 processes nor by the batch of 4
    args = [
        "validate.py",
        "--config",
        CPU_RECIPE,
        "--data_dir",
        data,
        "--ckpt_path",
        os.path.join(run_dir, "last.ckpt"),
        "--batch_size",
        "4",
        "--num_parallel_workers",
        "1",
        "--json",
    ]
    code, logs = msrun([*args, "--distribute", "True"], str(tmp_path / "logs"))
    assert code == 0, "\n".join(log[-2000:] for log in logs)
    two = json.loads([line for line in logs[0].splitlines() if line.startswith("{")][-1])
    code, out, err = run_script(args)
    assert code == 0, err[-2000:]
    one = json.loads(out.strip().splitlines()[-1])
    assert two["num_images"] == one["num_images"] == 23
    assert two["top1"] == pytest.approx(one["top1"]) and two["top5"] == pytest.approx(one["top5"])
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_distribute_without_msrun_is_one_line_and_exit_code_2(tmp_path):
    code, _, err = run_script(
        [
            "train.py",
            "--config",
            CPU_RECIPE,
            "--data_dir",
            str(tmp_path),
            "--ckpt_save_dir",
            str(tmp_path / "run"),
            "--distribute",
            "True",
        ],
        timeout=300,
    )
    assert code == 2 and "distribute=True needs the processes started by msrun" in err
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()]
