"""Speed of the shipped demo model against the machine's own float32 peak, and of its APIs.

Figures only: nothing is asserted. Three parts:

1. Peak. The machine's float32 GEMM rate (``torch.mm`` of two square float32 matrices) and the
   UNet's achieved rate through the library (``model.random`` with one batch: the DDIM steps,
   scheduler included), both in GFLOP/s, for each thread count, batch size and variant, and
   their ratio. The UNet's FLOPs per image-step are counted by
   ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls). Each round times
   the GEMM and then every UNet configuration in turn; a ratio is the median of its rounds'
   ratios, so contention from other processes on a shared machine weighs on both sides alike.
   Variants: ``float32`` is the library's float32 path (channels_last on the CPU),
   ``float32-nchw`` the same network in the default layout (the library before it chose
   channels_last), ``bfloat16`` the library with bfloat16 autocast.
2. torch.compile (inductor, with freezing) of the float32 UNet, in a fresh process with an empty
   compile cache, as a pipeline step in a fresh container would pay it: the compile time, the
   compiled and eager rates, and the image-steps it takes to pay for itself.
3. API throughput: samples per second of ``random`` and ``variation`` at several degrees, batch
   sizes, thread counts and precisions (``model.autocast``: off = float32, bfloat16 = mixed
   precision), with the speed-up over float32 beside each row.
4. Batch size and thread layout (``--layout``): float32 image-steps per second of the whole
   machine for each batch size, 1 process x 2 threads (one shard at a time) against 2 processes
   x 1 thread started together (two shards side by side, as kfp.local runs them), per kernel set
   (``--layout-isa``: ``avx2`` runs the workers under ``ATEN_CPU_CAPABILITY=avx2
   ONEDNN_MAX_CPU_ISA=AVX2``, what an AVX2-only CPU runs; ``native`` under the machine's own).
   Every measurement is fresh processes, loaded and warmed up before a common start; the rounds
   interleave the settings so load from other work falls on all alike.

The model is loaded as the pipeline loads it: ``configs/demo.yaml`` with its ``model`` section
set from the arguments, through ``privevo.image.models.load_model``. The last line is one JSON object.

Usage:
    .venv/bin/python bench/bench_models.py [--quick] [--threads 1 2] [--peak-batch-sizes 16 25 32 64]
        [--variants float32 float32-nchw bfloat16] [--rounds 3] [--no-compile]
        [--n 25] [--repeats 2] [--batch-sizes 25] [--degrees 0.6] [--autocast off bfloat16]
    .venv/bin/python bench/bench_models.py --layout-only [--layout-batch-sizes 25 50 100] [--layout-isa avx2 native]
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from privevo import runtime  # noqa: E402

runtime.prefer_passive_waiting()  # before torch loads OpenMP, as the library's steps do
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench._common import format_table, loadavg  # noqa: E402
from privevo.config import Config, parse_config  # noqa: E402
from privevo.image.models import load_model  # noqa: E402
from privevo.image.models.base import resolve_autocast  # noqa: E402
from privevo.image.models.ddpm_unet import DDPMUNetModel  # noqa: E402

#: The CPU flags that decide the kernels: FMA/AVX2 float32, AVX-512, bfloat16 dot products, AMX.
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
#: variant -> (model.autocast, keep the library's memory format)
VARIANTS = {"float32": ("off", True), "float32-nchw": ("off", False), "bfloat16": ("bfloat16", True)}
#: Image-steps of the demo (configs/demo.yaml, issue 18): what torch.compile has to pay for itself over.
DEMO_IMAGE_STEPS = 60_600
#: --layout-isa -> the environment of the layout workers: the machine's own kernels, or the AVX2 ones only.
ISA_ENV = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
#: Thread layouts of the two cores: (processes side by side, threads each).
LAYOUTS = ((1, 2), (2, 1))
QUICK = {"threads": [1], "peak_batch_sizes": [25], "rounds": 2, "peak_steps": 2, "compile": False, "n": 4,
         "repeats": 1, "batch_sizes": [4], "steps": 5}


def main() -> None:
    """Measure the peak, torch.compile and API figures the arguments ask for; print tables and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO_ROOT / "models" / "fashion-mnist-ddpm"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="a smoke run (under a minute): 1 thread, batch 25, no compile")
    peak = parser.add_argument_group("peak")
    peak.add_argument("--peak-batch-sizes", type=int, nargs="+", default=[16, 25, 32, 64])
    peak.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    peak.add_argument("--rounds", type=int, default=3, help="interleaved GEMM + UNet rounds per thread count")
    peak.add_argument("--peak-steps", type=int, default=4, help="DDIM steps per timed UNet call")
    peak.add_argument("--gemm-size", type=int, default=2048)
    peak.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                      help="time torch.compile in a fresh process (about 1-2 minutes on 2 cores)")
    peak.add_argument("--compile-batch-size", type=int, default=25, help="the demo's batch")
    peak.add_argument("--compile-threads", type=int, default=1, help="the demo's threads per shard")
    peak.add_argument("--compile-worker", action="store_true", help=argparse.SUPPRESS)
    api = parser.add_argument_group("API throughput")
    api.add_argument("--n", type=int, default=25, help="samples per timed call")
    api.add_argument("--repeats", type=int, default=2)
    api.add_argument("--batch-sizes", type=int, nargs="+", default=[25])
    api.add_argument("--degrees", type=float, nargs="+", default=[0.6])
    api.add_argument("--steps", type=int, default=25, help="DDIM steps")
    api.add_argument("--autocast", nargs="+", default=["off", "bfloat16"], help="model.autocast settings to compare")
    layout = parser.add_argument_group("batch size and thread layout")
    layout.add_argument("--layout", action="store_true", help="also measure batch sizes x thread layouts")
    layout.add_argument("--layout-only", action="store_true", help="measure only batch sizes x thread layouts")
    layout.add_argument("--layout-batch-sizes", type=int, nargs="+", default=[25, 50, 100])
    layout.add_argument("--layout-isa", nargs="+", choices=list(ISA_ENV), default=["avx2"])
    layout.add_argument("--layout-images", type=int, default=100, help="images per process per measurement")
    layout.add_argument("--layout-steps", type=int, default=5, help="sampler steps per image")
    layout.add_argument("--layout-rounds", type=int, default=2)
    layout.add_argument("--layout-worker", nargs=2, type=int, metavar=("BATCH", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args()
    if args.compile_worker:
        print(json.dumps(compile_worker(args)))
        return
    if args.layout_worker:
        layout_worker(args, *args.layout_worker)
        return
    if args.layout_only:
        print(json.dumps({"bench": "models", "layout": measure_layouts(args)}))
        return

    started, load_start = time.perf_counter(), loadavg()
    flags = runtime.cpu_flags()
    found = [f for f in FLAGS if f in flags]
    probe = load_variant(args, "float32", 2, 1)
    device = probe.device
    auto = resolve_autocast("auto", device, torch.float32)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, ATen kernels "
          f"{torch.backends.cpu.get_cpu_capability()}, device {device}; load average at start {' '.join(load_start or [])}")
    print(f"CPU flags found: {', '.join(found) or 'none'}; not found: {', '.join(f for f in FLAGS if f not in flags)}; "
          f"model.autocast 'auto' here runs the UNet in {dtype_name(auto)}")
    flops = flops_per_image_step(probe)
    print(f"UNet FLOPs: {flops / 1e9:.4g} GFLOP per image-step (FlopCounterMode, float32, convolutions and matmuls)")
    del probe

    peak_rows, gemm = measure_peak(args, flops)
    print(f"\nPeak: float32 GEMM {args.gemm_size}^3 (torch.mm) vs the UNet through model.random (DDIM {args.peak_steps} "
          f"steps, one batch), GFLOP/s, median of {args.rounds} interleaved rounds; ratio = UNet / float32 GEMM")
    print(format_table(peak_rows, [("threads", "threads"), ("batch_size", "batch"), ("variant", "variant"),
                                   ("precision", "UNet precision"), ("unet_gflops", "UNet GFLOP/s"), ("min", "min"),
                                   ("max", "max"), ("gemm_gflops", "GEMM GFLOP/s (float32)"), ("ratio", "ratio"),
                                   ("x_float32", "x float32")]))
    float32_rows = [r for r in peak_rows if r["precision"] == "float32"]
    best = max(float32_rows, key=lambda r: r["ratio"]) if float32_rows else None
    if best:
        print(f"best float32 ratio {best['ratio']:.2f}: {best['unet_gflops']:.1f} of {best['gemm_gflops']:.1f} GFLOP/s "
              f"({best['variant']}, batch {best['batch_size']}, {best['threads']} thread(s))")

    compiled = run_compile(args, flops) if args.compile else None
    results = measure_api(args)
    print(f"\nAPI throughput, samples/s, DDIM {args.steps} steps, n={args.n}, {args.repeats} runs, {device}")
    print(format_table(results, [("api", "api"), ("degree", "degree"), ("batch_size", "batch"), ("threads", "threads"),
                                 ("dtype", "precision"), ("median", "median"), ("min", "min"), ("max", "max"),
                                 ("x_float32", "x float32")]))
    layouts = measure_layouts(args) if args.layout else None
    load_end = loadavg()
    seconds = round(time.perf_counter() - started, 1)
    print(f"\nload average at end {' '.join(load_end or [])}; {seconds} s")
    print(json.dumps({
        "bench": "models",
        "model": args.model,
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_flags": found,
        "autocast_auto": dtype_name(auto),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "gemm_size": args.gemm_size,
        "gemm_gflops": gemm,
        "unet_gflop_per_image_step": round(flops / 1e9, 6),
        "peak_steps": args.peak_steps,
        "rounds": args.rounds,
        "peak": peak_rows,
        "best_ratio": best["ratio"] if best else None,
        "best_config": {k: best[k] for k in ("threads", "batch_size", "variant", "precision")} if best else None,
        "compile": compiled,
        "ddim_steps": args.steps,
        "n": args.n,
        "repeats": args.repeats,
        "threads": args.threads,
        "results": results,
        "layout": layouts,
        "seconds": seconds,
    }))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        return ""


def dtype_name(dtype: torch.dtype | None) -> str:
    """'float32' for no autocast, else the autocast dtype's name."""
    return str(dtype or torch.float32).replace("torch.", "")


def demo_config(args: argparse.Namespace, batch_size: int, autocast: str, steps: int) -> Config:
    """configs/demo.yaml with the model under test: the settings the pipeline would load it with."""
    data = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
    data["model"].update(path=args.model, num_inference_steps=steps, batch_size=batch_size, device=args.device,
                         autocast=autocast)
    return parse_config(data, source="configs/demo.yaml")


def load_variant(args: argparse.Namespace, variant: str, batch_size: int, steps: int) -> DDPMUNetModel:
    """The model as the library loads it, for ``variant`` (``float32-nchw``: the UNet put back in the default layout)."""
    autocast, library_layout = VARIANTS[variant]
    model = load_model(demo_config(args, batch_size, autocast, steps))
    assert isinstance(model, DDPMUNetModel)  # configs/demo.yaml's model kind
    if not library_layout:
        model.memory_format = torch.contiguous_format
        model.unet.to(memory_format=torch.contiguous_format)
    return model


def flops_per_image_step(model: DDPMUNetModel) -> float:
    """FLOPs of one UNet forward pass per image, counted by FlopCounterMode at batch 2 in float32."""
    unet = model.unet
    x = torch.zeros(2, model.channels, model.image_size, model.image_size, device=model.device)
    labels = None if model.num_classes is None else torch.zeros(2, dtype=torch.long, device=model.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor(500, device=model.device), class_labels=labels)
    return counter.get_total_flops() / 2


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall time covers it (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_gflops(a: torch.Tensor, b: torch.Tensor, calls: int = 3) -> float:
    """float32 GFLOP/s of ``a @ b`` (2 n^3 FLOPs), median of ``calls`` after one warm-up call."""
    torch.mm(a, b)
    times = []
    for _ in range(calls):
        synchronize(a.device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(a.device)
        times.append(time.perf_counter() - start)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / statistics.median(times) / 1e9


def unet_gflops(model: DDPMUNetModel, batch_size: int, steps: int, flops: float, seed: int) -> float:
    """Achieved GFLOP/s of one ``model.random`` call of one batch (``steps`` DDIM steps)."""
    synchronize(model.device)
    start = time.perf_counter()
    model.random(batch_size, seed=seed)
    synchronize(model.device)
    return batch_size * steps * flops / (time.perf_counter() - start) / 1e9


def measure_peak(args: argparse.Namespace, flops: float) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """GEMM and UNet GFLOP/s per thread count, batch size and variant, timed in interleaved rounds."""
    batch = max(args.peak_batch_sizes)
    models = {v: load_variant(args, v, batch, args.peak_steps) for v in args.variants}
    device = next(iter(models.values())).device
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(args.gemm_size, args.gemm_size, generator=generator).to(device) for _ in range(2))
    rows, gemm_medians = [], {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        configs = [(v, n) for v in models for n in args.peak_batch_sizes]
        for variant, n in configs:  # warm-up: oneDNN builds its kernels for each shape on first use
            models[variant].random(n, seed=0)
        gemm: list[float] = []
        unet: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        for round_ in range(args.rounds):
            gemm.append(gemm_gflops(a, b))
            for variant, n in configs:
                unet[(variant, n)].append(unet_gflops(models[variant], n, args.peak_steps, flops, seed=round_ + 1))
        gemm_medians[str(threads)] = round(statistics.median(gemm), 1)
        float32 = {n: statistics.median(unet[("float32", n)]) for n in args.peak_batch_sizes if ("float32", n) in unet}
        for (variant, n), rates in unet.items():
            median = statistics.median(rates)
            rows.append({
                "threads": threads, "batch_size": n, "variant": variant,
                "precision": dtype_name(models[variant].autocast_dtype),
                "memory_format": str(models[variant].memory_format).replace("torch.", ""),
                "unet_gflops": round(median, 1), "min": round(min(rates), 1), "max": round(max(rates), 1),
                "gemm_gflops": gemm_medians[str(threads)], "gemm_min": round(min(gemm), 1), "gemm_max": round(max(gemm), 1),
                "ratio": round(statistics.median(u / g for u, g in zip(rates, gemm, strict=True)), 3),
                "x_float32": round(median / float32[n], 2) if n in float32 else None,
            })
    return rows, gemm_medians


def run_compile(args: argparse.Namespace, flops: float) -> dict[str, Any]:
    """Run :func:`compile_worker` in a fresh process with an empty inductor cache; print and return its figures."""
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        command = [sys.executable, __file__, "--compile-worker", "--model", args.model, "--device", args.device,
                   "--peak-steps", str(args.peak_steps), "--rounds", str(args.rounds),
                   "--compile-batch-size", str(args.compile_batch_size), "--compile-threads", str(args.compile_threads)]
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=900)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"\ntorch.compile: failed ({tail})")
        return {"error": tail}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    saved = flops / 1e9 * (1 / result["eager_gflops"] - 1 / result["compiled_gflops"])  # seconds per image-step
    result["break_even_image_steps"] = round(result["compile_s"] / saved) if saved > 0 else None
    result["demo_image_steps"] = DEMO_IMAGE_STEPS
    result["pays_off_over_demo"] = saved > 0 and result["compile_s"] < saved * DEMO_IMAGE_STEPS
    eager_s = DEMO_IMAGE_STEPS * flops / 1e9 / result["eager_gflops"]
    compiled_s = DEMO_IMAGE_STEPS * flops / 1e9 / result["compiled_gflops"]
    print(f"\ntorch.compile (inductor, freezing; float32, batch {result['batch_size']}, {result['threads']} thread(s), "
          f"empty cache): compile {result['compile_s']:.1f} s; eager {result['eager_gflops']:.1f} GFLOP/s, compiled "
          f"{result['compiled_gflops']:.1f} GFLOP/s (x{result['compiled_gflops'] / result['eager_gflops']:.2f})")
    verdict = "pays off" if result["pays_off_over_demo"] else "does not pay off"
    break_even = result["break_even_image_steps"]
    print(f"  break-even after {break_even if break_even is not None else 'never'} image-steps; the demo's "
          f"{DEMO_IMAGE_STEPS:,} image-steps: {eager_s:.0f} s eager vs {compiled_s:.0f} s compiled + "
          f"{result['compile_s']:.0f} s compile in one process: {verdict} (every process that loads the model compiles "
          "again, and each other batch size recompiles)")
    return result


def compile_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Compile time and compiled vs eager GFLOP/s of the float32 UNet (run in a fresh process by :func:`run_compile`)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # fold the weights into the graph: oneDNN prepacks them
    torch.set_num_threads(args.compile_threads)
    n, steps = args.compile_batch_size, args.peak_steps
    model = load_variant(args, "float32", n, steps)
    flops = flops_per_image_step(model)
    eager = model.unet
    unet_gflops(model, n, steps, flops, seed=0)  # warm-up
    eager_first = unet_gflops(model, n, steps, flops, seed=0)
    model.unet = torch.compile(eager)
    compiled = model.unet
    start = time.perf_counter()
    model.random(n, seed=0)
    first_call = time.perf_counter() - start
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    for round_ in range(args.rounds):
        for name, net in (("eager", eager), ("compiled", compiled)):
            model.unet = net
            rates[name].append(unet_gflops(model, n, steps, flops, seed=round_ + 1))
    eager_call = n * steps * flops / 1e9 / statistics.median([eager_first, *rates["eager"]])
    return {"batch_size": n, "threads": args.compile_threads, "precision": "float32", "steps_per_call": steps,
            "compile_s": round(first_call - eager_call, 1), "eager_gflops": round(statistics.median(rates["eager"]), 1),
            "compiled_gflops": round(statistics.median(rates["compiled"]), 1)}


def measure_api(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Samples per second of every API, batch size, precision and thread count, with the speed-up over float32."""
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for autocast in args.autocast:
            for batch_size in args.batch_sizes:
                model = load_model(demo_config(args, batch_size, autocast, args.steps))
                images = model.random(args.n, seed=0)  # also the warm-up
                calls = [("random", None, functools.partial(model.random, args.n))]
                calls += [("variation", d, functools.partial(model.variation, images, d)) for d in args.degrees]
                for api, degree, call in calls:
                    rates = []
                    for repeat in range(args.repeats):
                        start = time.perf_counter()
                        call(seed=repeat + 1)
                        rates.append(args.n / (time.perf_counter() - start))
                    results.append({
                        "api": api, "degree": degree, "batch_size": batch_size, "threads": threads,
                        "device": str(model.device), "autocast": autocast,
                        "dtype": dtype_name(model.autocast_dtype),
                        "median": round(statistics.median(rates), 2), "min": round(min(rates), 2),
                        "max": round(max(rates), 2),
                    })
    baseline = {(r["api"], r["degree"], r["batch_size"], r["threads"]): r["median"] for r in results
                if r["dtype"] == "float32"}
    for r in results:
        base = baseline.get((r["api"], r["degree"], r["batch_size"], r["threads"]))
        r["x_float32"] = round(r["median"] / base, 2) if base else None
    return results


def layout_worker(args: argparse.Namespace, batch_size: int, threads: int) -> None:
    """One process of a layout measurement: load and warm up, say ready, wait for go, then time the sampling."""
    torch.set_num_threads(threads)
    model = load_model(demo_config(args, batch_size, "off", args.layout_steps))
    model.random(batch_size, seed=0)  # warm-up: oneDNN builds its kernels for the shape
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    model.random(args.layout_images, seed=1)
    seconds = time.perf_counter() - start
    print(json.dumps({"image_steps": args.layout_images * args.layout_steps, "seconds": seconds,
                      "kernels": torch.backends.cpu.get_cpu_capability()}), flush=True)


def run_layout(args: argparse.Namespace, isa: str, batch_size: int, processes: int, threads: int) -> dict[str, Any]:
    """Image-steps per second of ``processes`` workers of ``threads`` threads each, started together."""
    env = {k: v for k, v in os.environ.items() if k not in ISA_ENV["avx2"]} | ISA_ENV[isa]
    command = [sys.executable, __file__, "--layout-worker", str(batch_size), str(threads), "--model", args.model,
               "--device", "cpu", "--layout-images", str(args.layout_images), "--layout-steps", str(args.layout_steps)]
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                cwd=REPO_ROOT) for _ in range(processes)]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready", "layout worker failed"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    reports = [json.loads(worker.communicate()[0].strip().splitlines()[-1]) for worker in workers]
    total = sum(r["image_steps"] for r in reports)
    return {"isa": isa, "kernels": reports[0]["kernels"], "batch_size": batch_size, "layout": f"{processes}x{threads}",
            "rate": total / max(r["seconds"] for r in reports)}


def measure_layouts(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Float32 image-steps/s of the machine per kernel set, batch size and layout, median of interleaved rounds."""
    load_start = loadavg()
    rates: dict[tuple[str, int, str], list[float]] = {}
    kernels: dict[str, str] = {}
    for _ in range(args.layout_rounds):
        for isa in args.layout_isa:
            for batch_size in args.layout_batch_sizes:
                for processes, threads in LAYOUTS:
                    row = run_layout(args, isa, batch_size, processes, threads)
                    rates.setdefault((isa, batch_size, row["layout"]), []).append(row["rate"])
                    kernels[isa] = row["kernels"]
    rows: list[dict[str, Any]] = [{"isa": isa, "kernels": kernels[isa], "batch_size": batch_size, "layout": layout,
                                   "image_steps_per_s": round(statistics.median(r), 1), "min": round(min(r), 1),
                                   "max": round(max(r), 1)} for (isa, batch_size, layout), r in rates.items()]
    print(f"\nBatch size x thread layout: float32 image-steps/s of the machine (sampler {args.layout_steps} steps, "
          f"{args.layout_images} images per process), median of {args.layout_rounds} interleaved rounds; "
          f"layout = processes x threads; load average {' '.join(load_start or [])} -> {' '.join(loadavg() or [])}")
    print(format_table(rows, [("isa", "kernels asked"), ("kernels", "ATen kernels"), ("batch_size", "batch"),
                              ("layout", "layout"), ("image_steps_per_s", "image-steps/s"), ("min", "min"),
                              ("max", "max")]))
    for isa in args.layout_isa:
        best = max((r for r in rows if r["isa"] == isa), key=lambda r: r["image_steps_per_s"])
        print(f"fastest with {isa} kernels: batch {best['batch_size']}, {best['layout']} "
              f"({best['image_steps_per_s']} image-steps/s)")
    return rows


if __name__ == "__main__":
    main()
