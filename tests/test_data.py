"""Image set loading: good inputs load as uint8 NHWC, every bad input is a one-line UserError naming the file."""

from __future__ import annotations

import gzip
import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from privevo import storage
from privevo.errors import UserError
from privevo.image import data


def _save(path: Path, mode: str = "L", size: tuple[int, int] = (8, 8), value: int = 100) -> Path:
    """Write a solid image with PIL (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode in ("L", "P") else (value,) * len(mode)
    Image.new(mode, size, color).save(path)
    return path


def _error(call, *args, **kwargs) -> str:
    """Run call, expect a UserError, and return its message after checking it is one line."""
    with pytest.raises(UserError) as excinfo:
        call(*args, **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------- bad folder inputs


def test_truncated_png_is_named(tmp_path: Path) -> None:
    _save(tmp_path / "ok.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(buf, "PNG")
    bad = tmp_path / "bad.png"
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert str(bad) in _error(data.load_image_folder, str(tmp_path), 8, 1)


def test_text_file_named_png_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "notes.PNG"
    bad.write_text("not an image")
    message = _error(data.load_image_folder, str(tmp_path), 8, 1)
    assert str(bad) in message and "not a PNG/JPEG" in message


def test_wrong_channel_count_is_named(tmp_path: Path) -> None:
    bad = _save(tmp_path / "cat" / "rgb.jpg", "RGB")
    message = _error(data.load_image_folder, str(tmp_path), 8, 1)
    assert str(bad) in message and "set channels to 3" in message


def test_rgba_is_named(tmp_path: Path) -> None:
    bad = _save(tmp_path / "alpha.png", "RGBA")
    message = _error(data.load_image_folder, str(tmp_path), 8, 3)
    assert str(bad) in message and "RGBA" in message


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    assert f"no images found in {tmp_path}" in _error(data.load_image_set, "folder", str(tmp_path), 8, 1)


def test_missing_folder(tmp_path: Path) -> None:
    assert "no images found" in _error(data.load_image_set, "folder", str(tmp_path / "absent"), 8, 1)


def test_label_outside_configured_class_names(tmp_path: Path) -> None:
    _save(tmp_path / "cat" / "1.png")
    bad = _save(tmp_path / "dog" / "1.png")
    message = _error(data.load_image_folder, str(tmp_path), 8, 1, class_names=["cat"])
    assert "'dog'" in message and str(bad) in message


def test_mixed_loose_and_subfolder_images(tmp_path: Path) -> None:
    _save(tmp_path / "cat" / "1.png")
    _save(tmp_path / "loose.png")
    assert "loose.png" in _error(data.load_image_folder, str(tmp_path), 8, 1)


# ---------------------------------------------------------------------------- good folder inputs


def test_subfolder_classes(tmp_path: Path) -> None:
    _save(tmp_path / "dog" / "a.png", value=10)
    _save(tmp_path / "cat" / "b.JPG", value=20)
    _save(tmp_path / "cat" / "nested" / "c.jpeg", value=30)
    image_set = data.load_image_folder(str(tmp_path), 8, 1)
    assert image_set.images.shape == (3, 8, 8, 1) and image_set.images.dtype == np.uint8
    assert image_set.class_names == ["cat", "dog"]
    assert image_set.labels.tolist() == [0, 0, 1] and image_set.labels.dtype == np.int64


def test_prefix_classes_with_configured_names(tmp_path: Path) -> None:
    _save(tmp_path / "shoe_001.png", "RGB")
    _save(tmp_path / "bag_001.png", "RGB")
    _save(tmp_path / "bag_002.png", "RGB")
    image_set = data.load_image_folder(str(tmp_path), 8, 3, class_names=["shoe", "hat", "bag"])
    assert image_set.images.shape == (3, 8, 8, 3)
    assert image_set.labels.tolist() == [2, 2, 0]
    assert image_set.class_names == ["shoe", "hat", "bag"]


def test_unlabelled_when_no_prefix(tmp_path: Path) -> None:
    _save(tmp_path / "001.png")
    _save(tmp_path / "002.png")
    image_set = data.load_image_folder(str(tmp_path), 8, 1)
    assert image_set.labels is None and image_set.class_names is None


def test_different_sizes_are_resized_and_cropped(tmp_path: Path) -> None:
    wide = np.zeros((20, 40), dtype=np.uint8)
    wide[:, 10:30] = 255
    Image.fromarray(wide).save(tmp_path / "wide.png")
    _save(tmp_path / "small.png", size=(5, 5), value=77)
    image_set = data.load_image_folder(str(tmp_path), 10, 1)
    assert image_set.images.shape == (2, 10, 10, 1)
    assert (image_set.images[0] == 77).all()
    assert image_set.images[1].min() >= 200  # the bright centre band fills the crop


def test_palette_and_16_bit_are_converted(tmp_path: Path) -> None:
    _save(tmp_path / "pal.png", "P")
    assert data.load_image_folder(str(tmp_path), 8, 3).images.shape == (1, 8, 8, 3)
    (tmp_path / "pal.png").unlink()
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert (data.load_image_folder(str(tmp_path), 8, 1).images == 255).all()


def test_resize_center_crop_noop_and_shape() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    assert data.resize_center_crop(images, 6) is images
    assert data.resize_center_crop(images, 3).shape == (2, 3, 3, 3)
    assert data.to_channels(images[:, :, :, :1], 3).shape == (2, 6, 6, 3)


# ---------------------------------------------------------------------------- npz


def test_npz_float_images(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    np.savez(path, images=np.zeros((2, 8, 8, 1), dtype=np.float32))
    message = _error(data.load_npz, str(path), 8, 1)
    assert str(path) in message and "uint8" in message


def test_npz_labels_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, images=np.zeros((3, 8, 8), dtype=np.uint8), labels=np.array([0, 1]))
    assert str(path) in _error(data.load_npz, str(path), 8, 1)


def test_npz_label_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "r.npz"
    np.savez(path, images=np.zeros((2, 8, 8), dtype=np.uint8), labels=np.array([0, 5]))
    message = _error(data.load_npz, str(path), 8, 1, class_names=["a", "b"])
    assert str(path) in message and "label 5" in message


def test_npz_wrong_channels_and_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    np.savez(path, images=np.zeros((2, 8, 8, 3), dtype=np.uint8))
    assert str(path) in _error(data.load_npz, str(path), 8, 1)
    np.savez(path, pixels=np.zeros((2, 8, 8), dtype=np.uint8))
    assert "'images'" in _error(data.load_npz, str(path), 8, 1)


def test_npz_grayscale_nhw(tmp_path: Path) -> None:
    path = tmp_path / "g.npz"
    np.savez(path, images=np.full((4, 16, 16), 9, dtype=np.uint8), labels=np.array([0, 1, 1, 0], dtype=np.int32))
    image_set = data.load_image_set("npz", str(path), 8, 1, class_names=["x", "y"])
    assert image_set.images.shape == (4, 8, 8, 1) and (image_set.images == 9).all()
    assert image_set.labels.dtype == np.int64 and image_set.class_names == ["x", "y"]


# ---------------------------------------------------------------------------- load_image_set


def _labelled_npz(tmp_path: Path, count: int = 30) -> str:
    """An npz with count 4x4 grayscale images whose pixel value is their index, labels cycling 0..2."""
    path = tmp_path / "set.npz"
    images = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None], (count, 4, 4)).copy()
    np.savez(path, images=images, labels=np.arange(count) % 3)
    return str(path)


def test_unknown_class_filter(tmp_path: Path) -> None:
    path = _labelled_npz(tmp_path)
    message = _error(data.load_image_set, "npz", path, 4, 1, classes=["horse"], class_names=["cat", "dog", "bird"])
    assert "'horse'" in message and "cat, dog, bird" in message


def test_class_filter_keeps_full_indices(tmp_path: Path) -> None:
    path = _labelled_npz(tmp_path)
    image_set = data.load_image_set("npz", path, 4, 1, classes=["bird"], class_names=["cat", "dog", "bird"])
    assert len(image_set.images) == 10 and set(image_set.labels.tolist()) == {2}
    assert image_set.class_names == ["cat", "dog", "bird"]


def test_limit_is_seeded_and_reproducible(tmp_path: Path) -> None:
    path = _labelled_npz(tmp_path)
    first = data.load_image_set("npz", path, 4, 1, limit=7, seed=3)
    again = data.load_image_set("npz", path, 4, 1, limit=7, seed=3)
    other = data.load_image_set("npz", path, 4, 1, limit=7, seed=4)
    ids = first.images[:, 0, 0, 0].tolist()
    assert len(ids) == 7 and ids == sorted(ids)
    assert ids == again.images[:, 0, 0, 0].tolist() != other.images[:, 0, 0, 0].tolist()
    np.testing.assert_array_equal(first.labels, np.array(ids) % 3)


def test_bad_settings(tmp_path: Path) -> None:
    path = _labelled_npz(tmp_path)
    assert "source" in _error(data.load_image_set, "csv", path, 4, 1)
    assert "channels" in _error(data.load_image_set, "npz", path, 4, 4)
    assert "split" in _error(data.load_image_set, "npz", path, 4, 1, split="test")


# ---------------------------------------------------------------------------- Fashion-MNIST


def test_missing_fashion_mnist_dir(tmp_path: Path) -> None:
    message = _error(data.load_image_set, "fashion_mnist", str(tmp_path / "absent"), 28, 1, split="test")
    assert "apt-get install dataset-fashion-mnist" in message


def test_fashion_mnist_bad_magic(tmp_path: Path) -> None:
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 20))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x00"))
    message = _error(data.load_fashion_mnist, str(tmp_path), "test", 28, 1)
    assert "t10k-images-idx3-ubyte.gz" in message and "2051" in message


@pytest.mark.skipif(not Path(data.FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_test_split() -> None:
    image_set = data.load_image_set("fashion_mnist", data.FASHION_MNIST_DIR, 28, 1, split="test")
    assert image_set.images.shape == (10000, 28, 28, 1) and image_set.images.dtype == np.uint8
    assert sorted(set(image_set.labels.tolist())) == list(range(10))
    assert image_set.class_names == data.FASHION_MNIST_CLASSES
    rgb = data.load_image_set("fashion_mnist", data.FASHION_MNIST_DIR, 16, 3, split="test", classes=["Bag"], limit=5)
    assert rgb.images.shape == (5, 16, 16, 3) and set(rgb.labels.tolist()) == {8}
    assert (rgb.images[..., 0] == rgb.images[..., 2]).all()


def test_folder_and_npz_in_bucket(gcs_server, tmp_path: Path) -> None:
    bucket = gcs_server.make_bucket(f"private-{uuid.uuid4().hex[:12]}")
    for name in ("cat/1.png", "dog/2.png"):
        storage.write_bytes(storage.join(bucket, "imgs", name), _save(tmp_path / name).read_bytes())
    image_set = data.load_image_set("folder", storage.join(bucket, "imgs"), 8, 1)
    assert image_set.class_names == ["cat", "dog"] and image_set.labels.tolist() == [0, 1]
    npz_uri = storage.join(bucket, "set.npz")
    storage.write_npz(npz_uri, {"images": np.zeros((2, 8, 8), dtype=np.uint8), "labels": np.array([0, 9])})
    assert npz_uri in _error(data.load_npz, npz_uri, 8, 1, class_names=["a"])
