"""Train the public Fashion-MNIST classifier (``privevo.image.classifier.SmallCNN``) on the train split.

It judges whether generated samples are recognisable clothes and measures the class mix of
synthetic populations. Trained on Fashion-MNIST train only; the test split is used once, for
the accuracy figure on the model card.

Usage:
    .venv/bin/python models/train_public_classifier.py --epochs 2
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

# Importing the DDPM training script also puts the repository root on sys.path.
from train_public_model import CLASS_NAMES, DATA_DIR, REPO_ROOT, load_idx, sha256_of

from privevo.image.classifier import WEIGHTS_NAME, predict_proba, save_classifier, train_classifier


def main() -> None:
    """Train, evaluate on the test split, save the weights and write the card."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "fashion-mnist-classifier")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_x = load_idx(args.data_dir / "train-images-idx3-ubyte.gz")[..., None]
    train_y = load_idx(args.data_dir / "train-labels-idx1-ubyte.gz")
    start = time.time()
    model = train_classifier(train_x, train_y, 10, args.epochs, args.batch_size, args.seed, args.lr)
    wall = (time.time() - start) / 60
    save_classifier(model, args.out)

    test_x = load_idx(args.data_dir / "t10k-images-idx3-ubyte.gz")[..., None]
    test_y = load_idx(args.data_dir / "t10k-labels-idx1-ubyte.gz")
    pred = predict_proba(model, test_x).argmax(1)
    accuracy = float((pred == test_y).mean())
    per_class = [float((pred[test_y == c] == c).mean()) for c in range(10)]
    num_params = sum(p.numel() for p in model.parameters())
    rows = "\n".join(f"| {c} | {name} | {acc:.3f} |" for c, (name, acc) in enumerate(zip(CLASS_NAMES, per_class)))
    card = f"""# fashion-mnist-classifier

`privevo.image.classifier.SmallCNN` trained by `models/train_public_classifier.py` on the
Fashion-MNIST **train** split (60,000 images, MIT licence). It checks that the demo model's
samples are recognisable and measures the class mix of synthetic populations. Load it with
`privevo.image.classifier.load_classifier("models/fashion-mnist-classifier")`.

| | |
|---|---|
| architecture | 2 x [conv3x3-ReLU-conv3x3-ReLU-maxpool] (32, 64 ch), FC 128 + dropout 0.25, FC 10 |
| input | 28x28x1, scaled to [-1, 1] |
| parameters | {num_params:,} |
| epochs | {args.epochs} |
| batch size | {args.batch_size} |
| optimizer | Adam, lr {args.lr} |
| seed | {args.seed} |
| wall time | {wall:.2f} min on CPU, torch threads: {torch.get_num_threads()} |
| test accuracy | {accuracy:.4f} (Fashion-MNIST test split, 10,000 images) |
| `{WEIGHTS_NAME}` sha256 | `{sha256_of(args.out / WEIGHTS_NAME)}` |

Per-class test accuracy:

| label | class | accuracy |
|---|---|---|
{rows}

Limitations: a small, briefly trained model; shirts are the weakest class. Its confidence
on generated images is a rough recognisability check, not a calibrated quality metric.
"""
    (args.out / "README.md").write_text(card)
    print(f"test accuracy {accuracy:.4f}, {wall:.2f} min, wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
