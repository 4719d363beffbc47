"""Where a training step spends its time, ours (MindSpore's profiler) against PyTorch's (torch.profiler).

For one case of ``bench.py`` (default ``train_96_b32``: forward, backward and an SGD-momentum update
of the full Xception), each network runs ``--warmup`` steps (MindSpore compiles in the first; PyTorch's
first steps are up to 2x slower than later ones), then ``--steps`` timed and ``--steps`` profiled steps, and the
kernels' own times are summed per kind of work (convolutions, depthwise, batch norm, ...) and per
phase (forward, backward, optimizer). "between kernels" is the wall time of a step (timed without the
profiler, median of ``--steps``) less the sum of its kernels' times: framework overhead, waiting and
idle cores; it is negative where kernels ran at the same time (MindSpore runs independent kernels
concurrently).

    PYTHONPATH=. python benchmarks/profile_step.py                        # ours, torch, torch_cl: a markdown table
    PYTHONPATH=. python benchmarks/profile_step.py --case train_299_b8 --networks ours --json

Each network runs in its own child process (as in bench.py), so MindSpore and PyTorch never share one.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import CLEAN_ENV, cpu_info, installed, make_step, parse_case, torch_parts  # noqa: E402

KINDS = (
    "dense convs (1x1 pointwise, stem, shortcut)",
    "depthwise 3x3 convs",
    "im2col / strided slices (stem, shortcut)",
    "batch norm",
    "ReLU",
    "max pool",
    "residual adds, gradient sums",
    "classifier, loss, dropout",
    "optimizer (SGD momentum)",
    "other (copies, casts, reshapes, bookkeeping)",
)
PHASES = ("forward", "backward", "optimizer")

MINDSPORE_KINDS = {
    "Conv2D": 0,
    "Conv2DBackpropInput": 0,
    "Conv2DBackpropFilter": 0,
    "Custom": 1,
    "Im2Col": 2,
    "Col2Im": 2,
    "StridedSlice": 2,
    "StridedSliceGrad": 2,
    "BatchNorm": 3,
    "BatchNormGrad": 3,
    "ReLU": 4,
    "ReluGrad": 4,
    "MaxPool": 5,
    "MaxPoolGrad": 5,
    "Add": 6,
    "AddN": 6,
    "ApplyMomentum": 8,
}
CLASSIFIER_OPS = ("MatMul", "BiasAdd", "Dropout", "ReduceMean", "Exp", "Log", "ReduceMax", "Softmax", "Gather")


def mindspore_kind(op_type: str, name: str = "") -> str:
    """The kind of work of a MindSpore CPU kernel, by its op type (and, for custom ops, its cell: a
    custom op inside a ``MatmulConv2d`` is the stem's compiled unfold, inside a ``BatchNorm2d`` the
    compiled batch norm, inside a ``MaxPool3x3Stride2`` the compiled pool, elsewhere the depthwise kernel)."""
    if op_type == "Custom" and "MatmulConv2d" in name:
        return KINDS[2]
    if op_type == "Custom" and "BatchNorm2d" in name:
        return KINDS[3]
    if op_type == "Custom" and "MaxPool3x3Stride2" in name:
        return KINDS[5]
    if op_type in MINDSPORE_KINDS:
        return KINDS[MINDSPORE_KINDS[op_type]]
    if op_type.startswith(CLASSIFIER_OPS) or "Softmax" in op_type or "Dropout" in op_type:  # SparseSoftmax...
        return KINDS[7]
    return KINDS[9]


def torch_kind(name: str, shapes: List[List[int]]) -> str:
    """The kind of work of a PyTorch op, by its name and (for convolutions) its weight's shape."""
    if "conv" in name:
        depthwise = any(len(s) == 4 and s[1] == 1 and s[2:] == [3, 3] and s[0] > 1 for s in shapes)
        return KINDS[1] if depthwise else KINDS[0]
    if "batch_norm" in name:
        return KINDS[3]
    if "relu" in name or "threshold_backward" in name:
        return KINDS[4]
    if "max_pool" in name:
        return KINDS[5]
    if name in ("aten::add", "aten::add_"):
        return KINDS[6]
    classifier = ("linear", "addmm", "aten::mm", "softmax", "nll_loss", "cross_entropy", "dropout", "bernoulli")
    if any(k in name for k in classifier + ("aten::mean", "aten::sum", "mul")):
        return KINDS[7]
    return KINDS[9]


def _step_times(step, steps: int) -> List[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _warm_up(step, steps: int) -> None:
    for _ in range(steps):
        step()


def profile_mindspore(case: str, steps: int, warmup: int) -> Dict[str, object]:
    """Per kind and phase: milliseconds per step of our network's CPU kernels, and the step's wall time."""
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    step = make_step("ours", case)
    _warm_up(step, warmup)
    wall = float(np.median(_step_times(step, steps)))
    with tempfile.TemporaryDirectory(prefix="profile_ms_") as folder:
        profiler = ms.Profiler(output_path=folder)
        for _ in range(steps):
            step()
        profiler.analyse()
        (timestamps,) = glob.glob(os.path.join(folder, "**", "cpu_op_execute_timestamp_*.txt"), recursive=True)
        launches = []  # (start_us, ms, full name, op type)
        with open(timestamps) as f:
            for line in f:
                name, _, *runs = line.strip().split(";")
                op_type = name.rsplit("/", 1)[-1].split("-op")[0]
                for run in " ".join(runs).split():
                    start, duration, _ = run.split(",")
                    launches.append((int(start), float(duration), name, op_type))
    return {"wall_ms": wall * 1e3, "kernels": _mindspore_phases(launches, steps)}


def _mindspore_phases(launches: List[Tuple[int, float, str, str]], steps: int) -> Dict[str, Dict[str, float]]:
    """Sum kernel times per kind and phase; a kernel launched after the step's first gradient kernel is backward."""
    launches.sort()
    per_name = defaultdict(list)
    for launch in launches:
        per_name[launch[2]].append(launch)
    first_gradient = [
        min(runs[k][0] for n, runs in per_name.items() if n.startswith("Gradients/")) for k in range(steps)
    ]
    table: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for name, runs in per_name.items():
        for k, (start, duration, _, op_type) in enumerate(runs[:steps]):
            if "optimizer" in name:
                phase = "optimizer"
            elif name.startswith("Gradients/") or start >= first_gradient[k]:
                phase = "backward"
            else:
                phase = "forward"
            table[mindspore_kind(op_type, name)][phase] += duration / steps
    return {k: dict(v) for k, v in table.items()}


def profile_torch(case: str, steps: int, warmup: int, channels_last: bool) -> Dict[str, object]:
    """Per kind and phase: milliseconds per step of PyTorch's ops (self time), and the step's wall time."""
    from torch.profiler import ProfilerActivity, profile, record_function

    net, opt, loss_fn, x, labels = torch_parts(case, channels_last)

    def step() -> None:  # bench.py's step, its phases marked for the profiler
        opt.zero_grad(set_to_none=True)
        with record_function("phase::forward"):
            loss = loss_fn(net(x), labels)
        with record_function("phase::backward"):
            loss.backward()
        with record_function("phase::optimizer"):
            opt.step()
        loss.item()

    _warm_up(step, warmup)
    wall = float(np.median(_step_times(step, steps)))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    events = prof.events()
    ranges = [
        (e.time_range.start, e.time_range.end, e.name.split("::")[1]) for e in events if e.name.startswith("phase::")
    ]
    table: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        if e.name.startswith("phase::") or e.self_cpu_time_total <= 0:
            continue
        phase = next((p for s, t, p in ranges if s <= e.time_range.start < t), "forward")
        kind = KINDS[8] if phase == "optimizer" else torch_kind(e.name, e.input_shapes or [])
        table[kind][phase] += e.self_cpu_time_total / 1e3 / steps
    return {"wall_ms": wall * 1e3, "kernels": {k: dict(v) for k, v in table.items()}}


def run_child(network: str, case: str, steps: int, warmup: int) -> Dict[str, object]:
    """Profile ``network`` in a child process (one framework per process); its JSON result."""
    code = (
        "import json, sys; sys.path.insert(0, %r); import profile_step as p; "
        "print('RESULT' + json.dumps(p.profile_one(%r, %r, %d, %d)))"
    ) % (os.path.dirname(os.path.abspath(__file__)), network, case, steps, warmup)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=CLEAN_ENV)
    for line in result.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT") :])
    raise SystemExit(f"profiling {network} failed:\n{result.stderr[-3000:]}")


def profile_one(network: str, case: str, steps: int, warmup: int) -> Dict[str, object]:
    """Profile one network in this process."""
    if network == "ours":
        return profile_mindspore(case, steps, warmup)
    return profile_torch(case, steps, warmup, channels_last=network == "torch_cl")


def markdown(results: Dict[str, Dict[str, object]]) -> str:
    """The breakdown as a markdown table: ms per step, forward / backward (+ optimizer) per network."""
    names = list(results)
    head = "| kind of work | " + " | ".join(f"{n} fwd | {n} bwd" for n in names) + " |"
    rows = [head, "|---|" + "---|---|" * len(names)]
    totals = {n: [0.0, 0.0] for n in names}
    for kind in KINDS:
        cells = []
        for n in names:
            phases = results[n]["kernels"].get(kind, {})
            fwd, bwd = phases.get("forward", 0.0), phases.get("backward", 0.0) + phases.get("optimizer", 0.0)
            totals[n][0] += fwd
            totals[n][1] += bwd
            cells.append(f"{fwd:.0f} | {bwd:.0f}")
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    rows.append("| **kernels, total** | " + " | ".join(f"{f:.0f} | {b:.0f}" for f, b in totals.values()) + " |")
    walls = [results[n]["wall_ms"] for n in names]
    rows.append("| **step (wall), forward + backward** | " + " | ".join(f"{w:.0f} | " for w in walls) + " |")
    rows.append(
        "| between kernels (wall - kernels) | "
        + " | ".join(f"{w - sum(totals[n]):.0f} | " for n, w in zip(names, walls))
        + " |"
    )
    return "\n".join(rows)


def main(argv: List[str] = None) -> None:
    """Profile the requested networks on one case and print the breakdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="train_96_b32")
    parser.add_argument("--networks", default="ours,torch,torch_cl", help="ours, torch, torch_cl (comma-separated)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, then as many profiled steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing (the first compiles)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if parse_case(args.case)[0] != "train":
        raise SystemExit("profile_step.py profiles training steps: use a train_<size>_b<batch> case")
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} x{cpu['logical_cpus']}, {' '.join(cpu['vector_extensions'])}", flush=True)
    results = {}
    for network in args.networks.split(","):
        if network.startswith("torch") and not installed("torch"):
            print(f"{network}: torch is not installed, skipped", flush=True)
            continue
        results[network] = run_child(network, args.case, args.steps, args.warmup)
        print(f"{network}: step {results[network]['wall_ms']:.0f} ms", flush=True)
    if args.json:
        print(json.dumps({"case": args.case, "cpu": cpu, "networks": results}, indent=1))
    else:
        print(f"\n{args.case}: kernel time per step in ms (medians over {args.steps} steps)\n")
        print(markdown(results))


if __name__ == "__main__":
    main()
