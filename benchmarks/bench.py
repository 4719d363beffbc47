"""Speed and memory of our Xception against mindcv 0.3.0's, PyTorch and ONNX Runtime, in one process.

Networks: ``ours`` and ``mindcv`` (MindSpore, graph mode); ``torch`` and ``torch_cl`` (the same
Xception in plain PyTorch, ``benchmarks/torch_xception.py``, eager, fp32, default threads; ``_cl``:
channels_last), when torch is installed; ``onnxruntime`` (inference only: our model exported to
ONNX as ``export.py`` does, run by ONNX Runtime with its defaults), when onnxruntime is installed.
Frameworks that are not installed are skipped (their columns are left out).

Every round times one step of every (case, network) pair in turn, so all networks see the same
machine load; a case's figure is the median over the rounds after a warm-up step (the warm-up,
which compiles the graph, is reported separately as compile time). A matrix-multiply ceiling is
timed in the same rounds. Ours runs as used: ``inference_network`` (BatchNorm folded) for
inference, the plain network for training. Every MindSpore network, mindcv's too, runs with the
oneDNN instruction set that importing ``mindcv_xception`` chose for this CPU (``onednn_isa``; printed
with the environment); PyTorch's own oneDNN is not touched.

    python benchmarks/bench.py                       # all cases, 5 rounds
    python benchmarks/bench.py --cases infer_299_b2 --rounds 3
    python benchmarks/bench.py --memory --memory-batches 8,16,32 --json
    python benchmarks/bench.py --no-speed --pipeline            # input pipelines and the start-up scan
    python benchmarks/bench.py --cases infer_71_b2,train_71_b2 --rounds 1 --networks ours,torch,onnxruntime  # smoke

Case names are ``infer_<size>_b<batch>`` or ``train_<size>_b<batch>``; a training step is
forward, backward and an SGD-momentum update (cross-entropy loss, dropout 0.5 in both networks).
Peak memory (``--memory``) is the peak resident set size (VmHWM) of a child process that builds
the network and runs one step of one case, so each figure is one network and one case alone,
MindSpore's own runtime (about half a GB) included (for ``torch``, PyTorch's).

``--pipeline`` times the training input pipeline on a folder of ImageNet-like JPEGs (500 x 375,
quality 90; ``benchmarks/imagenet_like.py``) with the Ascend recipe's augmentation (random-resized
crop 299, flip, AutoAugment, random erasing 0.25), batch 32, 2 workers: ours (``data.train_dataset``)
against mindcv's ``create_dataset`` + ``create_transforms`` + ``create_loader``, rounds interleaved;
and the start-up scan of the folder (``data.scan_image_folder``), first and from its index.
"""

from __future__ import annotations

import argparse
import gc
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

# The environment before MindSpore is imported, for child processes: importing mindspore sets
# LD_LIBRARY_PATH (to its plugin/cpu folder, among others), and a PyTorch training step in a child
# started with that environment ran 1.8x slower (2.5 s against 1.4 s at 96 px batch 32).
CLEAN_ENV = dict(os.environ)
DEFAULT_CASES = "infer_299_b8,infer_299_b32,train_299_b8,train_96_b32"
NETWORKS = ("ours", "mindcv")
ANCHORS = ("torch", "torch_cl", "onnxruntime")  # timed when installed; onnxruntime for inference only
TORCH_PARAMS = 22_910_480  # Keras-style count (with BatchNorm moving statistics) at 1000 classes
ASCEND_RECIPE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "xception", "xception_ascend.yaml"
)
# Variants of ours for measuring one change at a time (--extra): every conv on MindSpore's native
# kernel (as on Ascend/GPU); only the depthwise step native (grouped conv), the stem and strided
# shortcut convs still as matmuls; the depthwise step as im2col + matmul (what runs where no C++
# compiler builds the compiled kernel); the (N, C, H, W) layout throughout instead of the channel-major
# one from entry block 3 on; and, for inference only, without BatchNorm folding (training never
# folds: there it would be ``ours`` timed twice). All but the last are image-major throughout.
EXTRA = ("ours_native_convs", "ours_grouped_dw", "ours_im2col_dw", "ours_image_major", "ours_unfolded_bn")
INFERENCE_ONLY = ("ours_unfolded_bn",)


def runs(network: str, case: str) -> bool:
    """Whether ``network`` is timed in ``case`` (ONNX Runtime and the inference-only variants infer only)."""
    return not (network in INFERENCE_ONLY + ("onnxruntime",) and parse_case(case)[0] == "train")


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
    from mindcv_xception.cpu_conv import matmul_conv_switches, set_channel_major, set_matmul_convs

    if network.startswith("ours"):
        net = Xception(drop_rate=0.5)
        if network in ("ours_native_convs", "ours_grouped_dw", "ours_im2col_dw", "ours_image_major"):
            set_channel_major(net, False)  # the (N, C, H, W) layout throughout (the others need it)
        if network == "ours_native_convs":
            set_matmul_convs(net, False)
        for _, cell, attribute in matmul_conv_switches(net):
            if attribute != "depthwise_as_matmul":
                continue
            if network == "ours_grouped_dw":  # only the depthwise step native
                setattr(cell, attribute, False)
            elif network == "ours_im2col_dw":
                cell.use_compiled_kernel = False
        if kind == "infer" and network != "ours_unfolded_bn":
            return inference_network(net)
    else:
        net = MindcvXception()
    net.set_train(kind == "train")
    return net


def installed(module: str) -> bool:
    """Whether ``module`` imports."""
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def available_networks(cases: List[str], requested: str = "") -> Tuple[str, ...]:
    """The networks to time: ``requested`` (comma-separated) or all, less frameworks not installed."""
    names = [n for n in requested.split(",") if n] or list(NETWORKS + ANCHORS)
    unknown = set(names) - set(NETWORKS + ANCHORS + EXTRA)
    if unknown:
        raise SystemExit(f"unknown network(s) {sorted(unknown)}: choose from {', '.join(NETWORKS + ANCHORS + EXTRA)}")
    missing = {"torch": "torch", "torch_cl": "torch", "onnxruntime": "onnxruntime"}
    return tuple(n for n in names if n not in missing or installed(missing[n]))


def torch_parts(case: str, channels_last: bool):
    """(net, optimizer, loss function, images, labels) of ``case`` on the same Xception in PyTorch.

    The net is in eval mode for inference cases (optimizer, loss and labels are then None).
    """
    import torch
    from torch_xception import TorchXception, keras_style_count

    kind, size, batch = parse_case(case)
    torch.manual_seed(0)
    net = TorchXception(drop_rate=0.5)
    count = keras_style_count(net)
    if count != TORCH_PARAMS:
        raise SystemExit(f"the PyTorch Xception has {count:,} parameters, not {TORCH_PARAMS:,}")
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if kind == "infer":
        return net.eval(), None, None, x, None
    labels = torch.from_numpy(rng.integers(0, 1000, batch).astype(np.int64))
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    return net, opt, torch.nn.CrossEntropyLoss(), x, labels


def torch_step(case: str, channels_last: bool) -> Callable[[], None]:
    """One eager PyTorch step of ``case`` on the same Xception (fp32, default threads)."""
    import torch

    net, opt, loss_fn, x, labels = torch_parts(case, channels_last)
    if opt is None:

        def infer() -> None:
            with torch.inference_mode():
                net(x).numpy()

        return infer

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), labels)
        loss.backward()
        opt.step()
        loss.item()

    return train


def onnxruntime_step(case: str) -> Callable[[], None]:
    """Inference of our Xception exported to ONNX (BatchNorm folded, native convs), ONNX Runtime's defaults."""
    import tempfile

    import onnxruntime

    from mindcv_xception import Xception
    from mindcv_xception.backends import export_onnx

    _, size, batch = parse_case(case)
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as folder:  # the session keeps the model in memory
        path = os.path.join(folder, f"xception_{size}_b{batch}.onnx")
        export_onnx(Xception(drop_rate=0.5), path, size, batch)
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    return lambda: session.run(None, {name: x})


def make_step(network: str, case: str) -> Callable[[], None]:
    """A function running one synchronised step of ``case`` on ``network``."""
    if network in ("torch", "torch_cl"):  # MindSpore is not imported (its runtime would count in torch's memory)
        return torch_step(case, network == "torch_cl")
    if network == "onnxruntime":
        return onnxruntime_step(case)
    import mindspore as ms
    from mindspore import nn

    from mindcv_xception.training_step import compile_step

    kind, size, batch = parse_case(case)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32))
    net = build(network, kind)
    if kind == "infer":
        cell, inputs = net, (x,)
    else:
        labels = ms.Tensor(rng.integers(0, 1000, batch).astype(np.int32))
        loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
        opt = nn.Momentum(net.trainable_params(), learning_rate=0.01, momentum=0.9)
        cell, inputs = nn.TrainOneStepCell(loss, opt), (x, labels)
        cell.set_train(True)

    def run() -> None:
        cell(*inputs).asnumpy()

    run.compile = lambda: compile_step(cell, *inputs)  # the graph alone, as the trainer compiles it (child_main)
    return run


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
    return (lambda: cell(a, b).asnumpy()), 2.0 * n**3


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_speed(cases: List[str], rounds: int, networks: Tuple[str, ...] = NETWORKS) -> Dict:
    """Timing of every case on every network, the networks interleaved round by round, plus the matmul ceiling.

    One case at a time, its networks released before the next: all five networks of all four cases
    held at once exceed 24 GiB (the run was killed for lack of memory).
    """
    compile_s, times, mm_times = {}, {}, []
    mm, mm_flops = matmul_step()
    mm()
    for case in cases:
        steps = {}
        for network in (n for n in networks if runs(n, case)):
            steps[network] = make_step(network, case)
            compile_s[f"{case}/{network}"] = round(timed(steps[network]), 2)  # warm-up: compiles
        for r in range(rounds):
            mm_times.append(timed(mm))
            for network, fn in steps.items():
                times.setdefault((case, network), []).append(timed(fn))
            print(
                f"{case} round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[case, n][-1]:.2f}s" for n in steps),
                file=sys.stderr,
                flush=True,
            )
        del steps
        gc.collect()
    ceiling = mm_flops / float(np.median(mm_times))
    sizes = sorted({parse_case(c)[1] for c in cases})
    # the anchors compute our network's multiply-adds: "ours" is always counted
    macs = {
        size: {net: multiply_adds(net, size) for net in NETWORKS if net == "ours" or net in networks} for size in sizes
    }
    results = {}
    for case in cases:
        kind, size, batch = parse_case(case)
        macs_ours = macs[size]["ours"]
        img_s = {n: batch / float(np.median(times[c, n])) for c, n in times if c == case}
        r: Dict = {"macs_per_image_G": round(macs_ours / 1e9, 3)}
        for n, v in img_s.items():
            r[f"{n}_img_s"] = round(v, 3)
            r[f"{n}_spread"] = [round(batch / t, 3) for t in (max(times[case, n]), min(times[case, n]))]
            # training costs about 3x the forward's flops, so only inference gets a share of the ceiling
            if kind == "infer" and n not in ("mindcv",):
                r[f"{n}_share_of_matmul_ceiling"] = round(2 * macs_ours * v / ceiling, 3)
        if "ours" in img_s and "mindcv" in img_s:
            r["ratio"] = round(img_s["ours"] / img_s["mindcv"], 3)
            for extra in EXTRA:
                if extra in img_s:
                    r[f"{extra}_ratio"] = round(img_s[extra] / img_s["mindcv"], 3)
        torch_runs = {n: img_s[n] for n in ("torch", "torch_cl") if n in img_s}
        if torch_runs:
            best = max(torch_runs, key=torch_runs.get)
            r["torch_best"] = best  # channels_last reported when it is the faster layout
            if "ours" in img_s:
                r["ours_vs_torch"] = round(img_s["ours"] / torch_runs[best], 3)
                if "torch" in img_s:  # the yardstick: PyTorch eager in its default layout
                    r["ours_vs_torch_default_layout"] = round(img_s["ours"] / img_s["torch"], 3)
        if "onnxruntime" in img_s and "ours" in img_s:
            r["ours_vs_onnxruntime"] = round(img_s["ours"] / img_s["onnxruntime"], 3)
        results[case] = r
    return {
        "cases": results,
        "compile_s": compile_s,
        "matmul_ceiling_gflop_s": round(ceiling / 1e9, 1),
        "networks": [n for n in networks],
        "rounds": rounds,
        "macs_per_image_G": {str(s): {n: round(v / 1e9, 3) for n, v in m.items()} for s, m in macs.items()},
    }


def child_memory(case: str, network: str) -> Dict[str, float]:
    """Peak RSS (MiB) of a fresh process running one step of ``case`` on ``network``.

    A child that fails (e.g. killed for lack of memory) is reported as ``{"error": ...}``, so the
    rest of the run's results are kept.
    """
    out = subprocess.run(
        [sys.executable, __file__, "--child", case, network],
        capture_output=True,
        text=True,
        env=dict(CLEAN_ENV, PYTHONPATH=os.pathsep.join(sys.path)),
    )
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
    """Peak RSS after building ``network``, after compiling its graph (MindSpore) and after one step of ``case``,
    in this (fresh) process, as one JSON line."""
    if not network.startswith("torch"):
        import mindspore as ms

        ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    step = make_step(network, case)
    built = peak_rss_mib()
    if hasattr(step, "compile"):  # MindSpore: its compiled graph stays in memory
        step.compile()
    compiled = peak_rss_mib()
    step()  # the first step allocates what every later step reuses
    peak = peak_rss_mib()
    print(json.dumps({"built_mib": round(built), "compiled_mib": round(compiled), "peak_mib": round(peak)}), flush=True)


def cpu_info() -> Dict[str, object]:
    """The CPU model, logical CPUs and its vector extensions (AVX2, AVX-512 subsets, AMX) from /proc/cpuinfo."""
    from mindcv_xception.compiled_kernels import cpu_info as read_cpu_info

    info = read_cpu_info()
    info.pop("flags")
    return info


def environment() -> Dict[str, object]:
    import mindcv
    import mindspore as ms

    def version(module: str) -> str:
        try:
            return __import__(module).__version__
        except ImportError:
            return "not installed"

    from mindcv_xception.compiled_kernels import cpu_kernels
    from mindcv_xception.onednn_isa import describe

    cpu = cpu_info()
    ms.set_context(device_target="CPU")
    kernels = cpu_kernels()
    return {
        "cpu": f"{cpu['model']} x{cpu['logical_cpus']}",
        "cpu_kernels": os.path.basename(kernels.library) if kernels else "none: im2col + matmul (no C++ compiler)",
        "onednn": describe(),  # MindSpore's oneDNN, for every MindSpore network here (PyTorch's is its own)
        "cpu_vector_extensions": cpu["vector_extensions"],
        "avx2": cpu["avx2"],
        "avx512": cpu["avx512"],
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "mindspore": ms.__version__,
        "mindcv": mindcv.__version__,
        "numpy": np.__version__,
        "torch": version("torch"),
        "onnxruntime": version("onnxruntime"),
        "torch_threads": __import__("torch").get_num_threads() if installed("torch") else None,
        "load_average": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }


def _pipeline_cfg(data_dir: str, workers: int, batch: int):
    """The Ascend recipe's data settings for a CPU run of the pipeline."""
    from mindcv_xception.config import parse_config

    return parse_config(
        [
            "--config",
            ASCEND_RECIPE,
            "--data_dir",
            data_dir,
            "--batch_size",
            str(batch),
            "--num_parallel_workers",
            str(workers),
            "--distribute",
            "False",
        ]
    )


def ours_loader(folder, cfg, epoch: int, encoded=None):
    """Our training batches (``data.train_dataset``) for ``epoch``; ``encoded=False``: PIL decodes in the source."""
    from mindcv_xception.data import train_dataset

    return train_dataset(folder, cfg, epoch, encoded=encoded)[0]


def mindcv_loader(data_dir: str, cfg):
    """mindcv 0.3.0's own ImageNet training pipeline with the same settings."""
    from mindcv.data import create_dataset, create_loader, create_transforms

    dataset = create_dataset(
        "imagenet", root=data_dir, split="train", shuffle=True, num_parallel_workers=cfg.num_parallel_workers
    )
    transforms = create_transforms(
        "imagenet",
        image_resize=cfg.image_resize,
        is_training=True,
        auto_augment=cfg.auto_augment,
        scale=tuple(cfg.scale),
        ratio=tuple(cfg.ratio),
        hflip=cfg.hflip,
        re_prob=cfg.re_prob,
        interpolation=cfg.interpolation,
        mean=cfg.mean,
        std=cfg.std,
    )
    return create_loader(
        dataset,
        batch_size=cfg.batch_size,
        drop_remainder=True,
        is_training=True,
        transform=transforms,
        num_parallel_workers=cfg.num_parallel_workers,
    )


def time_loader(loader, batches: int) -> Tuple[float, float]:
    """(seconds to the first batch, images/s over the next ``batches``)."""
    start = time.perf_counter()
    iterator = loader.create_tuple_iterator(num_epochs=1, output_numpy=True)
    next(iterator)  # the first batch: workers started, augmentation warm
    started = time.perf_counter()
    n = 0
    for _, batch in zip(range(batches), iterator):
        n += len(batch[0])
    elapsed = time.perf_counter() - started
    return started - start, n / max(elapsed, 1e-9)


def run_pipeline(rounds: int, images: int, batches: int, data_dir: str = "", workers: int = 2, batch: int = 32) -> Dict:
    """Training input pipelines, ours against mindcv's, rounds interleaved; and the start-up scan."""
    import tempfile

    from imagenet_like import make_imagenet_like

    from mindcv_xception import data

    data_dir = data_dir or os.path.join(tempfile.gettempdir(), f"bench_imagenet_like_{images}")
    made = time.perf_counter()
    make_imagenet_like(data_dir, images)
    made = time.perf_counter() - made
    cfg = _pipeline_cfg(data_dir, workers, batch)
    train_dir = os.path.join(data_dir, "train")
    scan = {}
    if os.path.exists(data.scan_index_path(train_dir)):
        os.remove(data.scan_index_path(train_dir))  # the first scan opens every image
    for label in ("first", "again"):
        start = time.perf_counter()
        folder = data.scan_image_folder(train_dir)
        scan[f"{label}_ms_per_image"] = round(1000 * (time.perf_counter() - start) / len(folder), 4)
    # ours_pil_decode: ours with every image decoded by PIL in the source (what a folder of PNGs gets)
    runs: Dict[str, List[Tuple[float, float]]] = {"ours": [], "mindcv": [], "ours_pil_decode": []}
    for r in range(rounds):
        runs["ours"].append(time_loader(ours_loader(folder, cfg, r), batches))
        runs["mindcv"].append(time_loader(mindcv_loader(data_dir, cfg), batches))
        runs["ours_pil_decode"].append(time_loader(ours_loader(folder, cfg, r, encoded=False), batches))
        print(
            f"pipeline round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1][1]:.1f} img/s" for n, v in runs.items()),
            file=sys.stderr,
            flush=True,
        )
    result = {
        "images": len(folder),
        "batch": batch,
        "workers": workers,
        "batches_timed": batches,
        "augmentation": f"random-resized crop {cfg.image_resize}, hflip {cfg.hflip}, {cfg.auto_augment}, "
        f"random erasing {cfg.re_prob}",
        "folder": data_dir,
        "folder_written_s": round(made, 1),
        "scan": scan,
    }
    for name, values in runs.items():
        result[f"{name}_img_s"] = round(float(np.median([v[1] for v in values])), 1)
        result[f"{name}_first_batch_s"] = round(float(np.median([v[0] for v in values])), 2)
    result["ratio"] = round(result["ours_img_s"] / result["mindcv_img_s"], 3)
    return result


def print_table(report: Dict) -> None:
    env = report["environment"]
    print(
        f"{env['cpu']} ({env['cores']} cores; {' '.join(env['cpu_vector_extensions']) or 'no AVX'}), "
        f"Python {env['python']}, MindSpore {env['mindspore']}, mindcv {env['mindcv']}, torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}, load average at start {env['load_average']}"
    )
    if "cases" in report:
        print(
            f"matmul ceiling {report['matmul_ceiling_gflop_s']} GFLOP/s; multiply-adds per image (G): "
            f"{report['macs_per_image_G']}"
        )
        shown = [n for n in report["networks"] if n not in EXTRA]
        print(
            f"{'case':16} "
            + " ".join(f"{n + ' img/s':>17}" for n in shown)
            + f" {'ours/mindcv':>11} {'ours/torch':>10} {'ours/torch best':>15} {'ours/onnxrt':>11}"
        )
        for case, r in report["cases"].items():
            cells = [f"{r[n + '_img_s']:17.2f}" if n + "_img_s" in r else f"{'-':>17}" for n in shown]
            ratios = [
                f"{r[k]:{w}.2f}" if k in r else f"{'-':>{w}}"
                for k, w in (
                    ("ratio", 11),
                    ("ours_vs_torch_default_layout", 10),
                    ("ours_vs_torch", 15),
                    ("ours_vs_onnxruntime", 11),
                )
            ]
            print(f"{case:16} " + " ".join(cells) + " " + " ".join(ratios))
            for extra in EXTRA:
                if f"{extra}_img_s" in r:
                    vs = f", {r[extra + '_ratio']:.2f} x mindcv" if extra + "_ratio" in r else ""
                    print(f"{'':16} {extra}: {r[extra + '_img_s']:.2f} img/s{vs}")
        print("compile (first call) s:", report["compile_s"])
    for case, m in report.get("memory", {}).items():
        print(
            f"peak RSS {case:16} "
            + "  ".join(
                f"{n}: {v['error']}"
                if "error" in v
                else f"{n}: {v['peak_mib']} MiB (built {v['built_mib']}, compiled {v['compiled_mib']})"
                for n, v in m.items()
            )
        )
    if "pipeline" in report:
        p = report["pipeline"]
        print(
            f"input pipeline ({p['images']} JPEGs 500x375 q90, {p['augmentation']}, batch {p['batch']}, "
            f"{p['workers']} workers): ours {p['ours_img_s']} img/s, mindcv {p['mindcv_img_s']} img/s, "
            f"ours decoding with PIL {p['ours_pil_decode_img_s']} img/s, "
            f"ratio {p['ratio']:.2f}; first batch after {p['ours_first_batch_s']} / {p['mindcv_first_batch_s']} s; "
            f"start-up scan {p['scan']} ms per image"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated (default {DEFAULT_CASES})")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up (default 5)")
    parser.add_argument("--no-speed", action="store_true", help="skip the timing (memory only)")
    parser.add_argument("--memory", action="store_true", help="peak RSS of every case, one child process each")
    parser.add_argument(
        "--memory-batches",
        default="",
        help="also the peak RSS of our training step at 299 for these batches, e.g. 8,16,32",
    )
    parser.add_argument(
        "--extra", action="store_true", help=f"also time {', '.join(EXTRA)} (one change at a time; ratios to mindcv)"
    )
    parser.add_argument(
        "--networks",
        default="",
        help=f"comma-separated subset of {', '.join(NETWORKS + ANCHORS)} (default: all installed)",
    )
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="also time the training input pipelines (ours, mindcv's) and the start-up scan",
    )
    parser.add_argument("--pipeline-images", type=int, default=640, help="JPEGs in the generated folder")
    parser.add_argument("--pipeline-batches", type=int, default=10, help="batches timed per round")
    parser.add_argument("--pipeline-dir", default="", help="where the JPEG folder is made (kept and reused)")
    parser.add_argument(
        "--pipeline-workers", type=int, default=2, help="decoding threads of each pipeline (num_parallel_workers)"
    )
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
    networks = available_networks(cases, args.networks) + (EXTRA if args.extra else ())
    report: Dict = {"environment": environment()}
    env = report["environment"]
    print(
        f"{env['cpu']}; vector extensions: {' '.join(env['cpu_vector_extensions']) or 'none'}; "
        f"MindSpore {env['mindspore']}, torch {env['torch']}, onnxruntime {env['onnxruntime']}; {env['onednn']}; "
        f"timing {', '.join(networks)}",
        file=sys.stderr,
        flush=True,
    )
    if not args.no_speed:
        report.update(run_speed(cases, args.rounds, networks))
    memory_networks = [n for n in networks if n in NETWORKS + ("torch",)]
    if args.memory:
        report["memory"] = {c: {n: child_memory(c, n) for n in memory_networks} for c in cases}
    for batch in filter(None, args.memory_batches.split(",")):
        case = f"train_299_b{int(batch)}"
        # the native kernels are what Ascend runs; PyTorch for the same batch when installed
        for network in ["ours", "ours_native_convs"] + [n for n in memory_networks if n == "torch"]:
            report.setdefault("memory", {}).setdefault(case, {})[network] = child_memory(case, network)
    if args.pipeline:
        report["pipeline"] = run_pipeline(
            args.rounds, args.pipeline_images, args.pipeline_batches, args.pipeline_dir, args.pipeline_workers
        )
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
