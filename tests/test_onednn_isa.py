"""The instruction set of MindSpore's oneDNN convolutions: measured once per CPU, cached, applied at import."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, run_script, script_env
from mindcv_xception import onednn_isa
from mindcv_xception.compiled_kernels import cpu_info

AVX2 = 0x7  # dnnl_cpu_isa_avx2
needs_avx512 = pytest.mark.skipif(not cpu_info()["avx512"], reason="the choice only exists on an AVX-512 CPU")

REPORT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(message)s")
{before}
import mindcv_xception
from mindcv_xception import onednn_isa as o
print("EFFECTIVE", o.onednn_library().dnnl_get_effective_cpu_isa())
print("CHOICE", o.current_choice().isa)
"""


def private_cache_env(cache) -> dict:
    """A child's environment variables: its own cache, no oneDNN cap of the user's."""
    return {"MINDCV_XCEPTION_CACHE": str(cache), "ONEDNN_MAX_CPU_ISA": "", "DNNL_MAX_CPU_ISA": ""}


def record_path(cache) -> str:
    """Where the measurement for this CPU, MindSpore and oneDNN is kept in ``cache``."""
    return onednn_isa.cache_path(str(cache), onednn_isa.onednn_version(onednn_isa.onednn_library()))


def report(tmp_path, before: str = "", **env):
    """Import the package in a fresh process with ``env`` (a private cache): its log, effective ISA and choice."""
    env = {**private_cache_env(tmp_path), **env}
    code, out, err = run_script(["-c", REPORT.format(before=before)], env=env)
    assert code == 0, err[-2000:]
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("EFFECTIVE", "CHOICE")))
    return out, int(lines["EFFECTIVE"]), lines["CHOICE"]


def cached_record(tmp_path, isa: str) -> None:
    """A measurement for this CPU in the cache at ``tmp_path`` saying ``isa`` won."""
    path = record_path(tmp_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    seconds = {"default": {"conv3x3": 1.0}, "AVX2": {"conv3x3": 0.1 if isa == "AVX2" else 1.0}}
    with open(path, "w") as f:
        json.dump({"isa": isa, "seconds": seconds}, f)


def test_the_cap_is_chosen_only_when_clearly_faster():
    times = {"conv3x3": 0.1, "depthwise3x3": 0.02, "conv1x1": 0.005}
    assert onednn_isa.decide({"default": times, "AVX2": {k: v / 40 for k, v in times.items()}}) == "AVX2"
    assert onednn_isa.decide({"default": times, "AVX2": {k: v * 0.95 for k, v in times.items()}}) == "default"
    assert onednn_isa.decide({"default": times, "AVX2": {k: v * 2 for k, v in times.items()}}) == "default"


@needs_avx512
def test_the_package_caps_onednn_where_the_cached_measurement_says_so(tmp_path):
    cached_record(tmp_path, "AVX2")
    out, effective, choice = report(tmp_path)
    assert (effective, choice) == (AVX2, "AVX2")
    assert "oneDNN capped at AVX2" in out


@needs_avx512
def test_the_package_leaves_onednn_alone_where_the_cap_lost(tmp_path):
    cached_record(tmp_path, "default")
    out, effective, choice = report(tmp_path)
    assert choice == "default" and effective != AVX2
    assert "an AVX2 cap would run them" in out


def test_a_user_setting_of_onednn_is_left_to_onednn(tmp_path):
    cached_record(tmp_path, "default")
    out, effective, choice = report(tmp_path, ONEDNN_MAX_CPU_ISA="AVX2")
    assert (effective, choice) == (AVX2, "AVX2")
    assert "ONEDNN_MAX_CPU_ISA set in the environment" in out


@needs_avx512
def test_an_import_after_a_mindspore_kernel_ran_warns_and_changes_nothing(tmp_path):
    conv = (
        "import mindspore as ms, numpy as np\n"
        "ms.set_context(mode=ms.GRAPH_MODE); ms.set_device('CPU')\n"
        "ms.nn.Conv2d(3, 4, 3)(ms.Tensor(np.ones((1, 3, 8, 8), np.float32))).asnumpy()"
    )
    out, effective, choice = report(tmp_path, before=conv, MINDCV_XCEPTION_ONEDNN_ISA="AVX2")
    assert choice == "default" and effective != AVX2
    assert "could not be capped at AVX2" in out and "import mindcv_xception first" in out


def test_an_unknown_choice_is_a_one_line_error(tmp_path):
    code, _, err = run_script(["-c", "import mindcv_xception"], env={"MINDCV_XCEPTION_ONEDNN_ISA": "avx512"})
    assert code != 0
    assert "MINDCV_XCEPTION_ONEDNN_ISA='avx512' is not one of auto, default, AVX2" in err


@needs_avx512
def test_the_measurement_runs_both_candidates_once_and_is_cached(tmp_path, monkeypatch):
    path = record_path(tmp_path)
    record = onednn_isa.measured_choice(path)
    assert set(record["seconds"]) == {"default", "AVX2"}
    assert all(set(t) == {"conv3x3", "depthwise3x3", "conv1x1", "matmul"} for t in record["seconds"].values())
    assert record["isa"] == onednn_isa.decide(record["seconds"])

    def measure_again(candidate):
        raise AssertionError("measured again")

    monkeypatch.setattr(onednn_isa, "_probe_in_child", measure_again)
    assert onednn_isa.measured_choice(path) == record


@needs_avx512
def test_two_processes_importing_at_once_measure_once_and_agree(tmp_path):
    env = script_env(private_cache_env(tmp_path))
    code = REPORT.format(before="")
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum(out.count("Timing oneDNN's convolutions") for out in outs) == 1, outs
    choices = [next(line for line in out.splitlines() if line.startswith("CHOICE")) for out in outs]
    assert choices[0] == choices[1]


def test_an_unreadable_cached_measurement_is_measured_again(tmp_path, monkeypatch):
    path = str(tmp_path / "onednn_isa" / "isa-x.json")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write('{"isa": "AVX2", "seco')  # cut short, as by a full disk
    probed = []

    def fake_probe(candidate):
        probed.append(candidate)
        return {"conv3x3": 1.0 if candidate == "default" else 0.5}

    monkeypatch.setattr(onednn_isa, "_probe_in_child", fake_probe)
    record = onednn_isa.measured_choice(path)
    assert probed == ["default", "AVX2"] and record["isa"] == "AVX2"
    with open(path) as f:
        assert json.load(f) == record


NATIVE_CONVS = """
import json, sys
import mindspore as ms, numpy as np
import mindcv_xception
from mindcv_xception import onednn_isa as o
ms.set_context(mode=ms.GRAPH_MODE); ms.set_device("CPU")
print("CHOICE", o.current_choice().isa, flush=True)
x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 16, 24, 24)).astype(np.float32))
out = {}
for name, conv in {"conv3x3": ms.nn.Conv2d(16, 32, 3, pad_mode="valid"),
                   "depthwise3x3": ms.nn.Conv2d(16, 16, 3, group=16)}.items():
    conv.weight.set_data(ms.Tensor(np.random.default_rng(1).standard_normal(conv.weight.shape).astype(np.float32)))
    grad = ms.ops.GradOperation(get_all=True, get_by_list=True)(conv, conv.trainable_params())
    (dx,), (dw,) = grad(x)
    out[name] = [conv(x).asnumpy().tolist(), dx.asnumpy().tolist(), dw.asnumpy().tolist()]
json.dump(out, open(sys.argv[1], "w"))
"""


@needs_avx512
def test_native_convs_give_the_same_results_capped_and_not(tmp_path):
    results = {}
    for isa in ("default", "AVX2"):
        target = tmp_path / f"{isa}.json"
        code, out, err = run_script(
            ["-c", NATIVE_CONVS, str(target)], env={"MINDCV_XCEPTION_ONEDNN_ISA": isa, "ONEDNN_MAX_CPU_ISA": ""}
        )
        assert code == 0 and f"CHOICE {isa}" in out, err[-2000:]
        results[isa] = json.loads(target.read_text())
    for name, (y, dx, dw) in results["default"].items():
        for ours, reference in zip(results["AVX2"][name], (y, dx, dw)):
            np.testing.assert_allclose(np.array(ours), np.array(reference), rtol=1e-4, atol=1e-4)


def test_native_convs_never_run_onednn_reference_kernels_under_the_packages_choice(tmp_path):
    """The slow path the choice exists for: oneDNN's reference convolution (on Zen 4 without the cap)."""
    code, out, err = run_script(
        ["-c", NATIVE_CONVS, str(tmp_path / "out.json")], env={"ONEDNN_VERBOSE": "1", "ONEDNN_MAX_CPU_ISA": ""}
    )
    assert code == 0, err[-2000:]
    convolutions = [line for line in out.splitlines() if ",exec," in line and "convolution" in line]
    assert convolutions, "oneDNN ran no convolution: the probe tests nothing"
    assert not [line for line in convolutions if "ref:" in line], convolutions[:3]
