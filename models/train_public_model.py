"""Train the public demo foundation model: a small unconditional DDPM on Fashion-MNIST train.

Only the Fashion-MNIST *train* split is read. The test split is never seen by this model:
the demo draws its "private" data from it, so the public model must not have trained on it.

Usage:
    .venv/bin/python models/train_public_model.py --steps 2000 --max-minutes 24

Writes ``models/fashion-mnist-ddpm/`` (the ``DDPMPipeline.save_pretrained`` layout with the
EMA weights as safetensors), ``loss_curve.png``, ``losses.json``, ``samples.png``,
``variations.png`` and the model card ``README.md``. ``--skip-training`` re-renders the
figures and the card from a model saved earlier.
"""

import argparse
import gzip
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
VARIATION_DEGREES = (0.2, 0.35, 0.5, 0.65, 0.8)
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def load_idx(path: Path) -> np.ndarray:
    """Read an idx-ubyte gzip file (images or labels) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def build_unet() -> UNet2DModel:
    """The demo architecture: three resolution levels, ResNet blocks only, about 2.5M parameters."""
    return UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        add_attention=False,
        norm_num_groups=8,
    )


def image_grid(images: np.ndarray, rows: int, cols: int, scale: int = 3) -> Image.Image:
    """Tile uint8 NHWC images into one PIL image, row-major."""
    n, h, w, c = images.shape
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(min(n, rows * cols)):
        r, col = divmod(i, cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = images[i]
    pil = Image.fromarray(grid[..., 0] if c == 1 else grid)
    return pil.resize((cols * w * scale, rows * h * scale), Image.NEAREST)


def train(args: argparse.Namespace, out_dir: Path) -> dict:
    """Train with AdamW + cosine lr + EMA, save the EMA weights, return the run statistics."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    images = load_idx(args.data_dir / "train-images-idx3-ubyte.gz")
    data = torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1)

    unet = build_unet()
    num_params = sum(p.numel() for p in unet.parameters())
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    ema = [p.detach().clone() for p in unet.parameters()]
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = min(200, args.steps // 10)

    def lr_factor(s: int) -> float:
        return min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    alphas = scheduler.alphas_cumprod

    print(f"training {num_params:,} parameters on {len(data):,} images for {args.steps} steps", flush=True)
    losses = []
    start = time.time()
    unet.train()
    for step in range(args.steps):
        idx = torch.from_numpy(rng.integers(0, len(data), args.batch_size))
        x0 = data[idx]
        flip = torch.from_numpy(rng.random(args.batch_size) < 0.5)
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,))
        a = alphas[t].sqrt()[:, None, None, None]
        s = (1 - alphas[t]).sqrt()[:, None, None, None]
        # Mixed precision: bfloat16 matmuls/convs (fast on CPUs with AMX or AVX512-BF16), float32 weights and loss.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bfloat16"):
            prediction = unet(a * x0 + s * noise, t).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, unet.parameters()):
                e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        elapsed = time.time() - start
        if (step + 1) % 50 == 0:
            recent = float(np.mean(losses[-50:]))
            print(f"step {step + 1}/{args.steps} loss {recent:.4f} {elapsed / 60:.1f} min", flush=True)
        if elapsed > args.max_minutes * 60:
            print(f"stopping at step {step + 1}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    wall = time.time() - start

    with torch.no_grad():
        for e, p in zip(ema, unet.parameters()):
            p.copy_(e)
    unet.eval()
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out_dir, safe_serialization=True)
    stats = {
        "num_parameters": num_params,
        "steps": len(losses),
        "planned_steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_schedule": f"linear warmup {warmup} steps, cosine to 0 over {args.steps} steps",
        "ema_decay": args.ema_decay,
        "seed": args.seed,
        "wall_minutes": round(wall / 60, 2),
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "final_loss": round(float(np.mean(losses[-100:])), 5),
        "losses": [round(v, 5) for v in losses],
    }
    (out_dir / "losses.json").write_text(json.dumps(stats))
    return stats


def plot_losses(losses: list[float], path: Path) -> None:
    """Raw and smoothed training loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = 50
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, alpha=0.3, lw=0.5, label="batch loss")
    ax.plot(np.arange(window - 1, len(losses)), smooth, lw=1.5, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("epsilon MSE")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(out_dir: Path, data_dir: Path, seed: int) -> None:
    """Draw samples.png and variations.png through the project's foundation-model API."""
    from privevo.image.models.ddpm_unet import DDPMUNetModel

    model = DDPMUNetModel.from_pretrained(str(out_dir), num_inference_steps=25, batch_size=64, device="cpu")
    samples = model.random(64, seed=seed)
    image_grid(samples, 8, 8).save(out_dir / "samples.png")

    train_images = load_idx(data_dir / "train-images-idx3-ubyte.gz")
    train_labels = load_idx(data_dir / "train-labels-idx1-ubyte.gz")
    picks = [int(np.flatnonzero(train_labels == c)[0]) for c in range(10)]
    originals = train_images[picks][..., None]
    rows = [originals]
    for degree in VARIATION_DEGREES:
        rows.append(model.variation(originals, degree, seed=seed))
    image_grid(np.concatenate(rows), len(rows), len(picks)).save(out_dir / "variations.png")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_card(out_dir: Path, stats: dict) -> None:
    """Write the model card README.md with the figures of this training run."""
    weights = out_dir / "unet" / "diffusion_pytorch_model.safetensors"
    size_mb = weights.stat().st_size / 1e6
    steps = str(stats["steps"])
    if stats["steps"] < stats["planned_steps"]:
        steps += f" of {stats['planned_steps']} planned (stopped by the wall-time cap)"
    epochs = stats["steps"] * stats["batch_size"] / 60000
    card = f"""# fashion-mnist-ddpm: the public demo foundation model

A small unconditional DDPM (`diffusers.UNet2DModel`) for 28x28 grayscale images, trained
from scratch by `models/train_public_model.py`. Private Evolution uses it only through
its two APIs (`privevo.image.models.ddpm_unet.DDPMUNetModel`): `random` (DDIM sampling) and `variation`
(SDEdit).

## Data
- Fashion-MNIST **train** split only (60,000 images, Debian package `dataset-fashion-mnist`),
  random horizontal flips. Labels were not used.
- The Fashion-MNIST **test** split was never seen: the demo draws its "private" data from
  it, so that the public model has no access to the private set.
- Licence of the data: MIT (Fashion-MNIST, Zalando Research).

## Architecture
- `UNet2DModel`, sample_size 28, 1 channel in and out, block_out_channels (32, 64, 128),
  layers_per_block 1, DownBlock2D/UpBlock2D (no attention anywhere), norm_num_groups 8,
  unconditional.
- Parameters: {stats["num_parameters"]:,}.
- `DDPMScheduler`: 1000 training steps, linear betas 1e-4..0.02, epsilon prediction.

## Training
| | |
|---|---|
| steps | {steps} |
| batch size | {stats["batch_size"]} |
| optimizer | AdamW, lr {stats["lr"]}, weight decay 1e-4, grad-norm clip 1.0 |
| lr schedule | {stats["lr_schedule"]} |
| EMA decay | {stats["ema_decay"]} (warm-up (1+s)/(10+s)); the saved weights are the EMA |
| seed | {stats["seed"]} |
| hardware | CPU, torch threads: {stats["threads"]} |
| precision | {stats.get("precision", "float32")} compute (autocast); float32 weights, optimizer and EMA |
| wall time | {stats["wall_minutes"]} min |
| final loss | {stats["final_loss"]} (mean epsilon MSE of the last 100 steps) |

Loss curve: `loss_curve.png` (values in `losses.json`). Samples (DDIM, 25 steps):
`samples.png`. SDEdit variations of Fashion-MNIST train images: `variations.png` (top row
the inputs, then degrees {", ".join(str(d) for d in VARIATION_DEGREES)}).

## Files
- `unet/diffusion_pytorch_model.safetensors`: {size_mb:.2f} MB,
  sha256 `{sha256_of(weights)}`
- `scheduler/scheduler_config.json`, `model_index.json` (the `DDPMPipeline` layout).

## Intended use
The public foundation model of the Private Evolution demo and its tests: name it in a config
(`model.kind: ddpm_unet`, `model.path: models/fashion-mnist-ddpm`, as `configs/demo.yaml` does)
and load it with `privevo.image.models.load_model(config)`, or directly with
`DDPMUNetModel.from_pretrained("models/fashion-mnist-ddpm")`.

## Limitations
- Small and briefly trained ({epochs:.2f} epochs of Fashion-MNIST): samples show the
  garment classes but are noisier, blotchier and less detailed than the data, and some are
  malformed or hard to tell apart (shirts, T-shirts, pullovers, coats).
- Unconditional: class-conditional PE has to rely on the vote, not on labels.
- 28x28 grayscale only; useless as a prior for any other kind of image.
"""
    (out_dir / "README.md").write_text(card)


def main() -> None:
    """Parse the command line, train, then draw the figures and write the card."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--max-minutes", type=float, default=24.0, help="stop training early after this long")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="bfloat16",
                        help="forward/backward compute precision (weights, optimizer and EMA stay float32)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "fashion-mnist-ddpm")
    parser.add_argument("--skip-training", action="store_true", help="only redraw figures and the card")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.skip_training:
        stats = json.loads((args.out / "losses.json").read_text())
    else:
        stats = train(args, args.out)
    plot_losses(stats["losses"], args.out / "loss_curve.png")
    render(args.out, args.data_dir, args.seed)
    write_card(args.out, stats)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
