"""The main job out of the box: a shortened demo run, and every README command's flags exist."""

import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, run_script, script_env


def readme_commands():
    """Each command line in the README's bash code blocks (msrun prefixes dropped)."""
    text = open(os.path.join(REPO, "README.md")).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = re.sub(r"\\\n\s*", " ", block)  # continued lines are one command
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("msrun"):
                line = line[line.index("python") :]
            if line:
                commands.append(line)
    return commands


def test_readme_shows_the_two_setup_commands_first():
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]
    makefile = open(os.path.join(REPO, "Makefile")).read()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("python")])
def test_readme_command_flags_exist(command):
    words = shlex.split(command)
    target = words[1:3] if words[1] == "-m" else words[1:2]
    code, out, err = run_script([*target, "--help"], timeout=300)
    assert code == 0, err[-1000:]
    for flag in (w.split("=")[0] for w in words if w.startswith("--")):
        assert re.search(rf"(^|\s|\[){re.escape(flag)}\b", out), f"{flag} is not an option of {' '.join(target)}"


def test_demo_data_interrupted_mid_write_leaves_no_folder_and_is_written_whole_next_time(tmp_path, monkeypatch):
    from PIL import Image

    from mindcv_xception import demo

    data = tmp_path / "data" / "digits"
    save, written = Image.Image.save, []

    def save_then_interrupt(self, *args, **kwargs):
        if len(written) == 5:
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing the images
        written.append(args[0])
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        demo.run(data=str(data), run_dir=str(tmp_path / "run"), per_class=5)
    monkeypatch.undo()
    assert not data.exists()  # the old code left data/digits/val/0 with 1 image, and never wrote the rest
    demo.write_data(str(data), per_class=5)
    assert sorted(p.relative_to(data).parts[:2] for p in data.glob("*/*/*.png")).count(("train", "9")) == 4
    assert len(list(data.glob("*/*/*.png"))) == 50 and not (tmp_path / "data" / "digits.partial").exists()


def test_demo_resumes_only_when_a_complete_epoch_checkpoint_exists(tmp_path, monkeypatch):
    from mindcv_xception import demo

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "xception_small-e0001.ckpt.tmp-99.ckpt").write_bytes(b"cut")  # killed during the first write
    commands = []
    monkeypatch.setattr(demo, "_run", commands.append)  # the scripts are not run
    demo.run(data=str(tmp_path / "digits"), run_dir=str(run_dir), per_class=2)
    assert commands[0][0] == "train.py" and "--resume" not in commands[0]  # the old demo passed --resume
    (run_dir / "xception_small-e0001.ckpt").write_bytes(b"")
    commands.clear()
    demo.run(data=str(tmp_path / "digits"), run_dir=str(run_dir), per_class=2)
    assert commands[0][-1] == "--resume"


@pytest.mark.slow
def test_shortened_demo_trains_validates_and_predicts(tmp_path):
    data, run_dir = str(tmp_path / "digits"), str(tmp_path / "run")
    code, out, err = run_script(
        ["-m", "mindcv_xception.demo", "--epochs", "3", "--per_class", "40", "--data", data, "--run", run_dir],
        timeout=1500,
    )
    assert code == 0, (out + err)[-3000:]
    metrics = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert len(metrics) == 3 and metrics[-1]["val_top1"] > 0.4  # 10 classes: chance is 0.1
    assert re.search(r"acc@top1 \d+\.\d+%", out)  # validate.py ran
    assert len(re.findall(r"^  1\. \d\.\d{4}  \d", out, re.M)) == 4  # infer.py's top-1 line for 4 images
    curves = os.path.join(run_dir, "curves.png")
    assert f"curves:     {curves}" in out and os.path.exists(curves)


@pytest.mark.slow
def test_demo_run_again_after_a_kill_resumes_instead_of_starting_over(tmp_path):
    data, run_dir = str(tmp_path / "digits"), str(tmp_path / "run")
    args = ["-m", "mindcv_xception.demo", "--epochs", "2", "--per_class", "20", "--data", data, "--run", run_dir]
    demo = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=script_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def epoch_one_done():
            metrics = os.path.join(run_dir, "metrics.jsonl")
            checkpoint = glob.glob(os.path.join(run_dir, "*-e0001.ckpt"))
            return checkpoint and os.path.exists(metrics) and os.path.getsize(metrics)

        deadline = time.time() + 900
        while not epoch_one_done() and demo.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert epoch_one_done(), "the first epoch's checkpoint and metrics never appeared"
    finally:
        os.killpg(demo.pid, signal.SIGKILL)  # the demo and its train.py child, as a Ctrl-C / kill would
        demo.wait()
    code, out, err = run_script(args, timeout=1500)
    assert code == 0, (out + err)[-3000:]
    assert "resuming it" in out
    epochs = [json.loads(line)["epoch"] for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert epochs == [1, 2]  # epoch 1 was not trained again


def test_ctrl_c_lets_the_demos_child_finish_instead_of_killing_it(tmp_path):
    from mindcv_xception.demo import _run

    done = tmp_path / "done"
    # the child sends SIGINT to the demo (as a terminal's Ctrl-C reaches both), then finishes its work
    _run(
        [
            "-c",
            f"import os, signal, time; os.kill(os.getppid(), signal.SIGINT); time.sleep(0.5); "
            f"open({str(done)!r}, 'w').close()",
        ]
    )
    assert done.exists()
