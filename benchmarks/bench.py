"""Speed and memory of our Xception against mindcv 0.3.0's built-in one, in one process.

Every round times one step of every (case, network) pair in turn, so both networks see the same
machine load; a case's figure is the median over the rounds after a warm-up step (the warm-up,
which compiles the graph, is reported separately as compile time). A matrix-multiply ceiling is
timed in the same rounds. Ours runs as used: ``inference_network`` (BatchNorm folded) for
inference, the plain network for training.

    python benchmarks/bench.py                       # all cases, 5 rounds
    python benchmarks/bench.py --cases infer_299_b2 --rounds 3
    python benchmarks/bench.py --memory --memory-batches 8,16,32 --json

Case names are ``infer_<size>_b<batch>`` or ``train_<size>_b<batch>``; a training step is
forward, backward and an SGD-momentum update (cross-entropy loss, dropout 0.5 in both networks).
Peak memory (``--memory``) is the peak resident set size (VmHWM) of a child process that builds
the network and runs one step of one case, so each figure is one network and one case alone,
MindSpore's own runtime (about half a GB) included.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

DEFAULT_CASES = "infer_299_b8,infer_299_b32,train_299_b8,train_96_b32"
NETWORKS = ("ours", "mindcv")
# Variants of ours for measuring one change at a time (--extra): every conv on MindSpore's native
# kernel (as on Ascend/GPU); only the depthwise step native (grouped conv), the stem and strided
# shortcut convs still as matmuls; and, for inference only, without BatchNorm folding (training never
# folds: there it would be ``ours`` timed twice).
EXTRA = ("ours_native_convs", "ours_grouped_dw", "ours_unfolded_bn")
INFERENCE_ONLY = ("ours_unfolded_bn",)


def runs(network: str, case: str) -> bool:
    """Whether ``network`` is timed in ``case`` (the inference-only variants are not in training cases)."""
    return not (network in INFERENCE_ONLY and parse_case(case)[0] == "train")


def parse_case(name: str) -> Tuple[str, int, int]:
    """('infer' | 'train', image size, batch) of a case name such as ``train_299_b8``."""
    match = re.fullmatch(r"(infer|train)_(\d+)_b(\d+)", name)
    if not match:
        raise SystemExit(f"bad case name {name!r}: use infer_<size>_b<batch> or train_<size>_b<batch>")
    return match.group(1), int(match.group(2)), int(match.group(3))


def build(network: str, kind: str):
    """The network under test, eval-mode for inference."""
    from mindcv.models.xception import Xception as MindcvXception

    import mindcv_xception  # noqa: F401  (registers ours)
    from mindcv_xception import Xception
    from mindcv_xception.bn_folding import inference_network
    from mindcv_xception.cpu_conv import matmul_conv_switches, set_matmul_convs

    if network.startswith("ours"):
        net = Xception(drop_rate=0.5)
        if network == "ours_native_convs":
            set_matmul_convs(net, False)
        if network == "ours_grouped_dw":
            for _, cell, attribute in matmul_conv_switches(net):
                if attribute == "depthwise_as_matmul":  # only the depthwise step native
                    setattr(cell, attribute, False)
        if kind == "infer" and network != "ours_unfolded_bn":
            return inference_network(net)
    else:
        net = MindcvXception()
    net.set_train(kind == "train")
    return net


def make_step(network: str, case: str) -> Callable[[], None]:
    """A function running one synchronised step of ``case`` on ``network``."""
    import mindspore as ms
    from mindspore import nn

    kind, size, batch = parse_case(case)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32))
    net = build(network, kind)
    if kind == "infer":
        return lambda: net(x).asnumpy()
    labels = ms.Tensor(rng.integers(0, 1000, batch).astype(np.int32))
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    opt = nn.Momentum(net.trainable_params(), learning_rate=0.01, momentum=0.9)
    step = nn.TrainOneStepCell(loss, opt)
    step.set_train(True)
    return lambda: step(x, labels).asnumpy()


def multiply_adds(network: str, size: int) -> int:
    """Multiply-adds per image of ``network`` at ``size``, from the shapes of its conv and dense layers.

    Runs one image in PyNative mode with forward hooks (our depthwise step as its nn.Conv2d).
    """
    import mindspore as ms
    from mindspore import nn

    from mindcv_xception.cpu_conv import set_matmul_convs

    net = build(network, "train")
    net.set_train(False)
    total = [0]

    def hook(cell, inputs, output):
        if isinstance(cell, nn.Conv2d):
            kh, kw = cell.kernel_size
            total[0] += int(np.prod(output.shape[1:])) * (cell.in_channels // cell.group) * kh * kw
        else:
            total[0] += cell.in_channels * cell.out_channels

    set_matmul_convs(net, False)  # every conv as its nn.Conv2d, so the hook sees it
    for _, cell in net.cells_and_names():
        if isinstance(cell, (nn.Conv2d, nn.Dense)):
            cell.register_forward_hook(hook)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net(ms.Tensor(np.zeros((1, 3, size, size), np.float32)))
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    return total[0]


def matmul_step(n: int = 1536) -> Tuple[Callable[[], None], float]:
    """One n x n x n fp32 matrix multiply in graph mode, and its flop count."""
    import mindspore as ms
    from mindspore import nn, ops

    class MatMul(nn.Cell):
        def construct(self, a, b):
            return ops.matmul(a, b)

    rng = np.random.default_rng(0)
    a, b = (ms.Tensor(rng.standard_normal((n, n)).astype(np.float32)) for _ in range(2))
    cell = MatMul()
    return (lambda: cell(a, b).asnumpy()), 2.0 * n ** 3


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_speed(cases: List[str], rounds: int, networks: Tuple[str, ...] = NETWORKS) -> Dict:
    """Interleaved timing of every case on both networks plus the matmul ceiling."""
    steps, compile_s = {}, {}
    for case in cases:
        for network in (n for n in networks if runs(n, case)):
            steps[case, network] = make_step(network, case)
            compile_s[f"{case}/{network}"] = round(timed(steps[case, network]), 2)  # warm-up: compiles
    mm, mm_flops = matmul_step()
    mm()
    times = {key: [] for key in steps}
    mm_times = []
    for r in range(rounds):
        mm_times.append(timed(mm))
        for key, fn in steps.items():
            times[key].append(timed(fn))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{c}/{n} {times[c, n][-1]:.2f}s" for c, n in steps),
              file=sys.stderr, flush=True)
    ceiling = mm_flops / float(np.median(mm_times))
    macs = {size: {net: multiply_adds(net, size) for net in NETWORKS}
            for size in sorted({parse_case(c)[1] for c in cases})}
    results = {}
    for case in cases:
        _, size, batch = parse_case(case)
        ours, theirs = (batch / float(np.median(times[case, n])) for n in NETWORKS)
        results[case] = {
            "ours_img_s": round(ours, 3), "mindcv_img_s": round(theirs, 3), "ratio": round(ours / theirs, 3),
            "ours_spread": [round(batch / t, 3) for t in (max(times[case, "ours"]), min(times[case, "ours"]))],
            "mindcv_spread": [round(batch / t, 3) for t in (max(times[case, "mindcv"]),
                                                            min(times[case, "mindcv"]))],
            "macs_per_image_G": round(macs[size]["ours"] / 1e9, 3),
        }
        for extra in (n for n in networks[len(NETWORKS):] if runs(n, case)):
            img_s = batch / float(np.median(times[case, extra]))
            results[case][f"{extra}_img_s"] = round(img_s, 3)
            results[case][f"{extra}_ratio"] = round(img_s / theirs, 3)
        if case.startswith("infer"):  # training costs about 3x the forward flops: share not shown
            results[case]["ours_share_of_matmul_ceiling"] = round(2 * macs[size]["ours"] * ours / ceiling, 3)
    return {"cases": results, "compile_s": compile_s, "matmul_ceiling_gflop_s": round(ceiling / 1e9, 1),
            "macs_per_image_G": {str(s): {n: round(v / 1e9, 3) for n, v in m.items()} for s, m in macs.items()}}


def child_memory(case: str, network: str) -> Dict[str, float]:
    """Peak RSS (MiB) of a fresh process running one step of ``case`` on ``network``.

    A child that fails (e.g. killed for lack of memory) is reported as ``{"error": ...}``, so the
    rest of the run's results are kept.
    """
    out = subprocess.run([sys.executable, __file__, "--child", case, network], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        errors = [ln for ln in out.stderr.splitlines() if "Error" in ln and "Cell.__del__" not in ln]
        return {"error": f"exit code {out.returncode}" + (f": {errors[-1].strip()}" if errors else "")}
    return json.loads(lines[-1])


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: kilobytes on Linux


def child_main(case: str, network: str) -> None:
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    step = make_step(network, case)
    built = peak_rss_mib()
    step()  # the first step allocates what every later step reuses
    peak = peak_rss_mib()
    print(json.dumps({"built_mib": round(built), "peak_mib": round(peak)}), flush=True)


def environment() -> Dict[str, str]:
    import mindcv
    import mindspore as ms

    cpu = "?"
    if os.path.exists("/proc/cpuinfo"):
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else "?"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "mindspore": ms.__version__, "mindcv": mindcv.__version__, "numpy": np.__version__,
            "load_average": " ".join(f"{v:.1f}" for v in os.getloadavg())}


def print_table(report: Dict) -> None:
    env = report["environment"]
    print(f"{env['cpu']} ({env['cores']} cores), MindSpore {env['mindspore']}, mindcv {env['mindcv']}, "
          f"load average at start {env['load_average']}")
    if "cases" in report:
        print(f"matmul ceiling {report['matmul_ceiling_gflop_s']} GFLOP/s; multiply-adds per image (G): "
              f"{report['macs_per_image_G']}")
        print(f"{'case':16} {'ours img/s':>11} {'mindcv img/s':>13} {'ratio':>6} {'share':>6}")
        for case, r in report["cases"].items():
            share = r.get("ours_share_of_matmul_ceiling")
            print(f"{case:16} {r['ours_img_s']:11.2f} {r['mindcv_img_s']:13.2f} {r['ratio']:6.2f} "
                  f"{'' if share is None else f'{share:6.0%}'}")
            for extra in EXTRA:
                if f"{extra}_img_s" in r:
                    print(f"{'':16} {extra}: {r[extra + '_img_s']:.2f} img/s, {r[extra + '_ratio']:.2f} x mindcv")
        print("compile (first call) s:", report["compile_s"])
    for case, m in report.get("memory", {}).items():
        print(f"peak RSS {case:16} " + "  ".join(
            f"{n}: {v['error']}" if "error" in v else f"{n}: {v['peak_mib']} MiB (built {v['built_mib']})"
            for n, v in m.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated (default {DEFAULT_CASES})")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up (default 5)")
    parser.add_argument("--no-speed", action="store_true", help="skip the timing (memory only)")
    parser.add_argument("--memory", action="store_true", help="peak RSS of every case, one child process each")
    parser.add_argument("--memory-batches", default="",
                        help="also the peak RSS of our training step at 299 for these batches, e.g. 8,16,32")
    parser.add_argument("--extra", action="store_true",
                        help=f"also time {', '.join(EXTRA)} (one change at a time; ratios to mindcv)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(*args.child)

    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    cases = [c for c in args.cases.split(",") if c]
    for case in cases:
        parse_case(case)
    report: Dict = {"environment": environment()}
    if not args.no_speed:
        report.update(run_speed(cases, args.rounds, NETWORKS + (EXTRA if args.extra else ())))
    if args.memory:
        report["memory"] = {c: {n: child_memory(c, n) for n in NETWORKS} for c in cases}
    for batch in filter(None, args.memory_batches.split(",")):
        case = f"train_299_b{int(batch)}"
        for network in ("ours", "ours_native_convs"):  # the native kernels are what Ascend runs
            report.setdefault("memory", {}).setdefault(case, {})[network] = child_memory(case, network)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
