"""A two-server msrun launch, rehearsed on one machine: each "server" is a network namespace of its own,
joined to the other by a virtual ethernet pair, so msrun on server 1 does not see the master address
as its own and starts no scheduler (on one shared network stack both launches would start one).
Needs root for ``ip netns``; skipped with the reason otherwise."""

import glob
import os
import re
import subprocess
import sys

import pytest

from helpers import CPU_RECIPE, QUICK, REPO, strip_noise

pytestmark = pytest.mark.slow
MSRUN = os.path.join(os.path.dirname(sys.executable), "msrun")
MASTER, WORKER = "10.231.0.1", "10.231.0.2"  # addresses inside this test's own namespaces only


def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def two_servers():
    """Two network namespaces with a veth pair between them; removed afterwards."""
    tag = str(os.getpid())
    names = [f"mxs0-{tag}", f"mxs1-{tag}"]
    made = ip("netns", "add", names[0])
    if made.returncode:
        pytest.skip(f"cannot create network namespaces here: {made.stderr.strip()}")
    try:
        ip("netns", "add", names[1])
        ip("link", "add", f"mxa{tag}", "type", "veth", "peer", "name", f"mxb{tag}")
        for name, dev, addr in ((names[0], f"mxa{tag}", MASTER), (names[1], f"mxb{tag}", WORKER)):
            ip("link", "set", dev, "netns", name)
            ip("-n", name, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", name, "link", "set", dev, "up")
            ip("-n", name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in names:
            ip("netns", "delete", name)


def test_two_server_launch_trains_in_step_with_one_scheduler(two_servers, digits_dir, tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], PYTHONPATH=REPO)
    run_dir = str(tmp_path / "run")
    launches = []
    for rank, name in enumerate(two_servers):
        cmd = [
            "ip",
            "netns",
            "exec",
            name,
            MSRUN,
            "--worker_num",
            "2",
            "--local_worker_num",
            "1",
            "--master_addr",
            MASTER,
            "--master_port",
            "8118",
            "--node_rank",
            str(rank),
            "--log_dir",
            str(tmp_path / f"server{rank}"),
            "--join",
            "True",
            "python",
            "train.py",
            "--config",
            CPU_RECIPE,
            "--data_dir",
            digits_dir,
            "--epoch_size",
            "1",
            "--ckpt_save_dir",
            run_dir,
            "--distribute",
            "True",
            *QUICK,
        ]
        launches.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [p.communicate(timeout=900)[0] for p in launches]
    logs = {path: strip_noise(open(path).read()) for path in glob.glob(str(tmp_path / "server*" / "*.log"))}
    detail = "\n".join(out[-1500:] for out in outputs) + "\n".join(v[-1500:] for v in logs.values())
    assert [p.returncode for p in launches] == [0, 0], detail
    assert sorted(os.path.relpath(p, tmp_path) for p in logs) == [
        "server0/scheduler.log",
        "server0/worker_0.log",
        "server1/worker_1.log",
    ]
    digests = {
        re.search(r"weights digest on rank (\d): (\w+)", log).groups()
        for log in logs.values()
        if "weights digest" in log
    }
    assert {rank for rank, _ in digests} == {"0", "1"} and len({d for _, d in digests}) == 1, detail
    assert "Global batch 16 (= 8 x 2 processes" in logs[str(tmp_path / "server0" / "worker_0.log")]
