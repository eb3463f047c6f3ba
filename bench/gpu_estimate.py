"""The model's time of a run on a GPU, on paper: planned UNet image-steps x FLOPs per image-step / a stated GPU rate.

No GPU is needed and nothing is downloaded. For each config:
- the UNet image-steps the run plans (``planned_image_steps``): the random API's full denoise of
  every sample, then for every vote the lookahead's L variations of every sample at that vote's
  degree (``int(degree x num_inference_steps)`` steps back each, SDEdit), and at most one fresh
  variation per child (children reuse a lookahead variation when ``population.reuse_lookahead``,
  so the true count lies between the two totals printed);
- the FLOPs of one image-step, counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per
  multiply-add, convolutions and matmuls) on the model's architecture with random weights: the
  shipped model's own folder, or for the paper-scale configs (whose weights are not on this
  machine) improved-diffusion's class-conditional ImageNet-64 model (270M parameters) rebuilt
  as a diffusers ``UNet2DModel`` from its published flags, 273M parameters here;
- the model's seconds at each GPU's dense bfloat16 tensor peak (datasheet figures) times a stated
  utilisation, as GPU-hours, and the run's model wall when ``kubernetes.max_parallel_shards``
  shards run side by side, plus one model load per shard task (a stated figure).

Figures only. Usage:
    .venv/bin/python bench/gpu_estimate.py [--configs configs/cifar10.yaml configs/camelyon17.yaml configs/demo.yaml]
        [--utilisation 0.4] [--load-s 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._common import format_table  # noqa: E402
from privevo.config import Config, load_config  # noqa: E402
from privevo.image.models.ddpm_unet import variation_steps  # noqa: E402

#: Dense bfloat16 tensor-core peaks from the vendors' datasheets (the sparse figures are twice these).
GPU_PEAK_FLOPS = {"L4": 121e12, "A100 SXM": 312e12, "H100 SXM": 989e12}

#: improved-diffusion's "class-conditional ImageNet-64 model (270M parameters)" (image_size 64, num_channels 192,
#: num_res_blocks 3, channel_mult 1,2,3,4, attention at 16 and 8 px, learn_sigma, class_cond, scale-shift norm):
#: the model the paper-scale configs name (models/imagenet64-cond-ddpm), as a diffusers UNet2DModel.
IMAGENET64_COND_270M: dict[str, Any] = {
    "sample_size": 64, "in_channels": 3, "out_channels": 6, "layers_per_block": 3,
    "block_out_channels": (192, 384, 576, 768),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "attention_head_dim": None, "num_class_embeds": 1000, "resnet_time_scale_shift": "scale_shift",
}


def planned_image_steps(config: Config) -> dict[str, int]:
    """UNet image-steps of a run: random API, lookahead variations, and at most one fresh variation per child."""
    population, steps = config.population, config.model.num_inference_steps
    size = population.size
    per_vote = [variation_steps(steps, degree) for degree in population.degree_schedule()]
    random_api = size * steps
    lookahead = sum(size * population.lookahead * s for s in per_vote)
    children = sum(size * s for s in per_vote)
    return {"random": random_api, "lookahead": lookahead, "children_max": children,
            "total_min": random_api + lookahead if population.reuse_lookahead and population.lookahead else
            random_api + lookahead + children,
            "total_max": random_api + lookahead + children}


def flops_per_image_step(config: Config) -> tuple[float, float, str]:
    """(FLOPs of one image-step, parameters, what was counted) for the config's UNet, random weights."""
    import torch
    from diffusers import UNet2DModel
    from torch.utils.flop_counter import FlopCounterMode

    path = config.model.path or ""
    folder = next((f for f in (REPO_ROOT / path / "unet", REPO_ROOT / path) if (f / "config.json").exists()), None)
    if path and folder is not None:
        unet = UNet2DModel.from_config(UNet2DModel.load_config(folder))
        what = f"{path} (its own architecture)"
    else:
        unet = UNet2DModel(**IMAGENET64_COND_270M)
        what = "improved-diffusion class-conditional ImageNet-64 (270M), rebuilt"
    unet.eval()
    size = unet.config.sample_size
    sample = torch.randn(1, unet.config.in_channels, size, size)
    labels = torch.zeros(1, dtype=torch.long) if unet.config.num_class_embeds else None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(sample, torch.tensor([10]), class_labels=labels)
    return float(counter.get_total_flops()), float(sum(p.numel() for p in unet.parameters())), what


def estimate(config: Config, flops: float, utilisation: float, load_s: float) -> list[dict[str, Any]]:
    """One row per GPU: GPU-hours of the model's work (``flops`` per image-step) and the run's model wall with its
    shards side by side."""
    image_steps = planned_image_steps(config)
    shards = config.population.num_shards
    parallel = min(shards, config.kubernetes.max_parallel_shards or shards)
    shard_tasks = shards * (config.population.generations + 1)  # the initial shard task and one per vote
    rows = []
    for gpu, peak in GPU_PEAK_FLOPS.items():
        rate = peak * utilisation
        low, high = (image_steps[k] * flops / rate for k in ("total_min", "total_max"))
        wall_low, wall_high = ((seconds + shard_tasks * load_s) / parallel for seconds in (low, high))
        rows.append({"config": config.name, "gpu": gpu, "gpu_hours": _hours(low, high),
                     "load_hours": _hours(shard_tasks * load_s), "parallel": parallel,
                     "wall_hours": _hours(wall_low, wall_high)})
    return rows


def _hours(*seconds: float) -> str:
    """Seconds as hours to 3 significant figures, a range when two are given."""
    return "-".join(f"{value / 3600:.3g}" for value in seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["configs/cifar10.yaml", "configs/camelyon17.yaml",
                                                         "configs/demo.yaml"])
    parser.add_argument("--utilisation", type=float, default=0.4,
                        help="share of the GPU's dense bfloat16 peak the UNet reaches (stated, not measured)")
    parser.add_argument("--load-s", type=float, default=30.0,
                        help="seconds per shard task to copy and load the model (stated, not measured)")
    args = parser.parse_args()
    print(f"GPU rates: dense bfloat16 peaks {', '.join(f'{g} {p / 1e12:.0f} TFLOPS' for g, p in GPU_PEAK_FLOPS.items())}"
          f", times a utilisation of {args.utilisation} (stated); {args.load_s:.0f} s of model load per shard task")
    steps_rows, gpu_rows = [], []
    for path in args.configs:
        config = load_config(REPO_ROOT / path)
        flops, params, what = flops_per_image_step(config)
        steps_rows.append({"config": config.name, "model": what, "params_m": round(params / 1e6, 1),
                           "gflop": round(flops / 1e9, 3), **planned_image_steps(config)})
        gpu_rows += estimate(config, flops, args.utilisation, args.load_s)
    print(format_table(steps_rows, [("config", "config"), ("model", "UNet counted"), ("params_m", "params M"),
                                    ("gflop", "GFLOP / image-step"), ("random", "random API"),
                                    ("lookahead", "lookahead"), ("children_max", "children (max)"),
                                    ("total_min", "image-steps (reuse)"), ("total_max", "image-steps (max)")]))
    print(format_table(gpu_rows, [("config", "config"), ("gpu", "GPU"), ("gpu_hours", "model GPU-hours"),
                                  ("load_hours", "load GPU-hours"), ("parallel", "shards side by side"),
                                  ("wall_hours", "model wall hours")]))


if __name__ == "__main__":
    main()
