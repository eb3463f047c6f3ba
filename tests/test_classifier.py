"""The small CNN classifier on a synthetic four-class task: learns, is deterministic, round-trips."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from privevo.errors import UserError
from privevo.image.classifier import SmallCNN, load_classifier, predict_proba, save_classifier, train_classifier

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def quadrant_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 28x28 images whose class is the quadrant holding a bright square."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        images[i, 2 + 14 * r : 12 + 14 * r, 2 + 14 * c : 12 + 14 * c] = 220
    return images, labels


@pytest.fixture(scope="module")
def trained() -> SmallCNN:
    images, labels = quadrant_images(640, seed=0)
    return train_classifier(images, labels, num_classes=4, epochs=1, batch_size=64, seed=0)


def test_learns_and_predicts_probabilities(trained: SmallCNN) -> None:
    images, labels = quadrant_images(200, seed=1)
    probs = predict_proba(trained, images, batch_size=64)
    assert probs.shape == (200, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == labels).mean() > 0.9


def test_accepts_rgb_and_other_sizes(trained: SmallCNN) -> None:
    images, labels = quadrant_images(64, seed=2)
    rgb = np.repeat(images, 3, axis=-1)
    big = np.repeat(np.repeat(rgb, 2, axis=1), 2, axis=2)  # 56x56x3
    assert (predict_proba(trained, big).argmax(1) == labels).mean() > 0.9


def test_same_seed_same_model_other_seed_differs() -> None:
    images, labels = quadrant_images(128, seed=3)
    first = train_classifier(images, labels, 4, epochs=1, batch_size=32, seed=5)
    again = train_classifier(images, labels, 4, epochs=1, batch_size=32, seed=5)
    other = train_classifier(images, labels, 4, epochs=1, batch_size=32, seed=6)
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(first.head[-1].weight, other.head[-1].weight)


def test_save_load_round_trip(trained: SmallCNN, tmp_path: Path) -> None:
    save_classifier(trained, tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf")
    images, _ = quadrant_images(32, seed=4)
    np.testing.assert_array_equal(predict_proba(loaded, images), predict_proba(trained, images))


def test_bad_input(tmp_path: Path) -> None:
    images, labels = quadrant_images(8, seed=5)
    cases = [
        lambda: load_classifier(tmp_path),
        lambda: train_classifier(images, labels + 4, num_classes=4),
        lambda: train_classifier(images, labels[:3], num_classes=4),
        lambda: train_classifier(images.astype(np.float32), labels, num_classes=4),
    ]
    for case in cases:
        with pytest.raises(UserError) as excinfo:
            case()
        assert "\n" not in str(excinfo.value)
