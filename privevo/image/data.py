"""Load private and public image sets (image folders, .npz files, Fashion-MNIST) as uint8 NHWC arrays.

Every bad input becomes a one-line UserError that names the file and says how to fix it;
messages never contain pixel values.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from privevo import storage
from privevo.data_quality import DataQuality
from privevo.errors import UserError
from privevo.layout import normalised, overlaps

if TYPE_CHECKING:
    from privevo.config import DataConfig

SOURCES = ("folder", "npz", "fashion_mnist")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


@dataclass
class ImageSet:
    """Images (uint8 NHWC) with optional labels (int64 indices into class_names) and where they came from."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    source: str


# ---------------------------------------------------------------------------- array helpers


def _resize_one(image: np.ndarray, size: int) -> np.ndarray:
    """Resize one HWC uint8 image so its shorter side is size, then centre-crop to size x size."""
    h, w, c = image.shape
    if h == size and w == size:
        return image
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    pil = Image.fromarray(image[:, :, 0] if c == 1 else image)
    pil = pil.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    out = np.asarray(pil.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return out.reshape(size, size, c)


def resize_center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (shorter side to size) and centre-crop a uint8 NHWC batch; returns images unchanged when already size x size."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((images.shape[0], size, size, images.shape[3]), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = _resize_one(image, size)
    return out


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Convert a uint8 NHWC batch to 1 or 3 channels (gray is replicated; RGB is averaged with ITU-R 601 weights)."""
    have = images.shape[3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=3)
    if have == 3 and channels == 1:
        gray = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None]
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def _check_channels_setting(channels: int) -> None:
    """Only grayscale and RGB are supported."""
    if channels not in (1, 3):
        raise UserError(f"channels is {channels}: set it to 1 (grayscale) or 3 (RGB)")


def _check_image_size(image_size: int) -> None:
    """Images are square and at least one pixel."""
    if image_size < 1:
        raise UserError(f"image_size is {image_size}: set it to a positive number of pixels")


# ---------------------------------------------------------------------------- image folders


def _decode_image(data: bytes, name: str, channels: int) -> np.ndarray:
    """Fully decode one PNG/JPEG into uint8 HWC with the requested channel count, or blame the file."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            if mode in _SIXTEEN_BIT_MODES:
                wide = np.asarray(img, dtype=np.uint16).astype(np.uint32)
                array = ((wide * 255 + 32767) // 65535).astype(np.uint8)
            elif mode == "1":
                array = np.asarray(img.convert("L"))
            elif mode == "P":
                array = np.asarray(img.convert("RGB"))
            else:
                array = np.asarray(img)
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError):
        raise UserError(f"cannot decode image {name}: the file is corrupt or not a PNG/JPEG; replace or delete it") from None
    if mode in _ALPHA_MODES:
        raise UserError(
            f"image {name} has transparency (mode {mode}): flatten it onto a background and save it as RGB or grayscale"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype != np.uint8 or array.shape[2] not in (1, 3):
        raise UserError(f"image {name} has unsupported mode {mode}: convert it to 8-bit grayscale or RGB")
    if array.shape[2] != channels:
        kind = "grayscale" if channels == 1 else "RGB"
        raise UserError(
            f"image {name} has {array.shape[2]} channel(s) but channels is {channels}: "
            f"set channels to {array.shape[2]} or convert the images to {kind}"
        )
    return array


def _folder_labels(relative_names: list[str], path: str, quality: DataQuality | None = None) -> list[str] | None:
    """Class of each file: its top-level subfolder, else the file-name prefix before '_', else None (unlabelled).

    With ``quality`` a loose image beside class subfolders gets no class (skipped by :func:`_index_labels`)."""
    in_subfolder = ["/" in name for name in relative_names]
    if any(in_subfolder):
        if quality is not None:
            return [name.split("/", 1)[0] if inside else "" for name, inside in zip(relative_names, in_subfolder,
                                                                                    strict=True)]
        if not all(in_subfolder):
            loose = relative_names[in_subfolder.index(False)]
            raise UserError(
                f"{path} mixes class subfolders with loose images such as {loose}: move every image into a class subfolder"
            )
        return [name.split("/", 1)[0] for name in relative_names]
    prefixes = [name.split("_", 1)[0] if "_" in name else "" for name in relative_names]
    return prefixes if all(prefixes) else None


def _index_labels(names: list[str], class_names: list[str] | None, files: list[str],
                  quality: DataQuality | None = None) -> tuple[np.ndarray, list[str]]:
    """Map label names to indices into class_names (inferred as the sorted names when not configured);
    with ``quality`` a label outside class_names is a skipped record (label -1) instead of an error."""
    if class_names is None:
        class_names = sorted(set(names) - {""})
    index = {name: i for i, name in enumerate(class_names)}
    for name, file in zip(names, files, strict=True):
        if name not in index:
            message = f"label {name!r} of {file} is not in class_names: add it to class_names or remove the file"
            if quality is None:
                raise UserError(message)
            quality.skip(file, message)
    return np.array([index.get(name, -1) for name in names], dtype=np.int64), list(class_names)


def load_image_folder(path: str, image_size: int, channels: int, class_names: list[str] | None = None,
                      quality: DataQuality | None = None) -> ImageSet:
    """Load every .png/.jpg/.jpeg under a folder (local or gs://), labelled by subfolder or file-name prefix.

    Classes come from the top-level subfolder (cat/001.png), else from the file-name prefix
    before the first '_' when every file has one (cat_001.png), else the set is unlabelled.
    Palette images become RGB (any palette transparency is dropped), 1-bit and 16-bit grayscale
    become 8-bit grayscale, images with transparency are rejected. Images of another size are resized (shorter side) and
    centre-cropped to image_size. With ``quality`` (a private set) a file that fails is skipped and counted there.
    """
    _check_image_size(image_size)
    _check_channels_setting(channels)
    files = [uri for uri in storage.list_files(path) if uri.lower().endswith(IMAGE_EXTENSIONS)]
    if not files and quality is None:
        raise UserError(f"no images found in {path}: put .png/.jpg/.jpeg files there (optionally in class subfolders)")
    images = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    good = np.ones(len(files), bool)
    for i, (uri, data) in enumerate(zip(files, storage.read_many(files), strict=True)):  # in parallel on gs://
        try:
            images[i] = _resize_one(_decode_image(data, uri, channels), image_size)
        except UserError as error:
            if quality is None:
                raise
            quality.skip(uri, str(error))
            good[i] = False
    if quality is not None:
        quality.records_read = len(files)
    names = _folder_labels([storage.relative_to(uri, path) for uri in files], path, quality)
    if names is None:
        return ImageSet(images[good], None, None, path)
    labels, class_names = _index_labels(names, class_names, files, quality)
    good &= labels >= 0
    return ImageSet(images[good], labels[good], class_names, path)


# ---------------------------------------------------------------------------- npz files


def _check_labels(
    labels: np.ndarray, count: int, class_names: list[str] | None, path: str, quality: DataQuality | None = None
) -> tuple[np.ndarray, list[str]]:
    """Validate integer labels against the images and class_names; infer names '0'..'K-1' when none are configured.

    With ``quality`` a label outside 0..K-1 is a skipped row (label -1) instead of an error."""
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"labels in {path} are {labels.dtype}: store class indices as integers")
    if labels.ndim != 1 or len(labels) != count:
        raise UserError(
            f"labels in {path} have shape {labels.shape} but there are {count} images: store one label per image"
        )
    labels = labels.astype(np.int64)
    if quality is not None:
        bad = labels < 0 if class_names is None else (labels < 0) | (labels >= len(class_names))
        for row in np.flatnonzero(bad):
            quality.skip(f"{path} row {row}", f"label {labels[row]} is not a class index of class_names")
        labels = np.where(bad, -1, labels)
        names = class_names if class_names is not None else [str(i) for i in range(int(labels.max(initial=-1)) + 1)]
        return labels, list(names)
    if count == 0:
        return labels, list(class_names or [])
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise UserError(f"label {low} in {path} is negative: labels are class indices 0..K-1")
    if class_names is None:
        return labels, [str(i) for i in range(high + 1)]
    if high >= len(class_names):
        raise UserError(
            f"label {high} in {path} is not in class_names ({len(class_names)} names, indices 0..{len(class_names) - 1}): "
            "add the missing class names or fix the labels"
        )
    return labels, list(class_names)


def load_npz(path: str, image_size: int, channels: int, class_names: list[str] | None = None,
             quality: DataQuality | None = None) -> ImageSet:
    """Load an .npz with uint8 'images' (NHWC, or NHW grayscale) and optional integer 'labels' (with ``quality``,
    rows whose label is not a class are skipped and counted there)."""
    _check_image_size(image_size)
    _check_channels_setting(channels)
    arrays = storage.read_npz(path)
    if "images" not in arrays:
        found = ", ".join(sorted(arrays)) or "none"
        raise UserError(
            f"{path} has no 'images' array (found: {found}): save it with numpy.savez(path, images=..., labels=...)"
        )
    images = arrays["images"]
    if images.dtype != np.uint8:
        raise UserError(
            f"images in {path} are {images.dtype}: convert them to uint8 in 0..255 (e.g. (x * 255).round().astype('uint8'))"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        hint = " (looks channels-first: transpose to NHWC)" if images.ndim == 4 and images.shape[1] in (1, 3) else ""
        raise UserError(
            f"images in {path} have shape {images.shape}{hint}: store them as NHWC with 1 or 3 channels, or NHW"
        )
    if images.shape[3] != channels:
        raise UserError(
            f"images in {path} have {images.shape[3]} channel(s) but channels is {channels}: "
            f"set channels to {images.shape[3]} or convert the images"
        )
    labels = None
    if quality is not None:
        quality.records_read = len(images)
    if "labels" in arrays:
        labels, class_names = _check_labels(arrays["labels"], len(images), class_names, path, quality)
        if quality is not None and (labels < 0).any():
            images, labels = images[labels >= 0], labels[labels >= 0]
    else:
        class_names = None
    return ImageSet(resize_center_crop(images, image_size), labels, class_names, path)


# ---------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(uri: str, magic: int, dims: int) -> np.ndarray:
    """Read a gzipped idx file of unsigned bytes with the expected magic number and rank."""
    try:
        data = gzip.decompress(storage.read_bytes(uri))
    except (OSError, EOFError, zlib.error):
        raise UserError(
            f"{uri} is not a readable gzip file: reinstall it with `apt-get install --reinstall dataset-fashion-mnist`"
        ) from None
    header = 4 + 4 * dims
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise UserError(
            f"{uri} is not an idx file with magic number {magic}: point path at the Fashion-MNIST idx .gz files"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if len(data) - header != int(np.prod(shape)):
        raise UserError(f"{uri} is truncated: reinstall it with `apt-get install --reinstall dataset-fashion-mnist`")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(directory: str, split: str, image_size: int, channels: int) -> ImageSet:
    """Load the Fashion-MNIST train or test split from its idx .gz files (Debian package dataset-fashion-mnist)."""
    _check_image_size(image_size)
    _check_channels_setting(channels)
    if split not in ("train", "test"):
        raise UserError(f"split is {split!r}: Fashion-MNIST has the splits 'train' and 'test'")
    prefix = "train" if split == "train" else "t10k"
    images_uri = storage.join(directory, f"{prefix}-images-idx3-ubyte.gz")
    labels_uri = storage.join(directory, f"{prefix}-labels-idx1-ubyte.gz")
    for uri in (images_uri, labels_uri):
        if not storage.exists(uri):
            raise UserError(
                f"Fashion-MNIST file {uri} not found: run `apt-get install dataset-fashion-mnist` "
                f"or set path to a folder holding the idx .gz files (default {FASHION_MNIST_DIR})"
            )
    images = _read_idx(images_uri, _IDX_IMAGES_MAGIC, 3)
    labels = _read_idx(labels_uri, _IDX_LABELS_MAGIC, 1).astype(np.int64)
    if len(labels) != len(images) or (len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise UserError(
            f"{labels_uri} does not match {images_uri}: reinstall with `apt-get install --reinstall dataset-fashion-mnist`"
        )
    images = to_channels(resize_center_crop(images[..., None], image_size), channels)
    return ImageSet(images, labels, list(FASHION_MNIST_CLASSES), directory)


# ---------------------------------------------------------------------------- entry point


def _filter_classes(image_set: ImageSet, classes: list[str], path: str, quality: DataQuality | None = None) -> ImageSet:
    """Keep the images of the named classes; labels stay indices into the full class_names.

    With ``quality`` a named class without images is noted there instead of refused."""
    if image_set.labels is None or image_set.class_names is None:
        raise UserError(f"classes is set but the images in {path} have no labels: remove classes or label the images")
    present = [image_set.class_names[i] for i in np.unique(image_set.labels)]
    missing = [c for c in classes if c not in present]
    if missing and quality is None:
        raise UserError(f"class {missing[0]!r} not found in {path}: choose from {', '.join(present)}")
    if quality is not None:
        quality.missing_classes = missing
    keep = np.isin(image_set.labels, [image_set.class_names.index(c) for c in classes if c in present])
    return ImageSet(image_set.images[keep], image_set.labels[keep], image_set.class_names, image_set.source)


def _subset(image_set: ImageSet, limit: int, seed: int) -> ImageSet:
    """A seeded random subset of at most limit images, in their original order."""
    if limit < 1:
        raise UserError(f"limit is {limit}: set it to a positive number of images or leave it out")
    if limit >= len(image_set.images):
        return image_set
    keep = np.sort(np.random.default_rng(seed).choice(len(image_set.images), size=limit, replace=False))
    labels = None if image_set.labels is None else image_set.labels[keep]
    return ImageSet(image_set.images[keep], labels, image_set.class_names, image_set.source)


def load_image_set(
    source: str,
    path: str,
    image_size: int,
    channels: int,
    split: str | None = None,
    classes: list[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    class_names: list[str] | None = None,
    rows: tuple[int, int] | None = None,
    quality: DataQuality | None = None,
) -> ImageSet:
    """Load an image set from a folder, an .npz or Fashion-MNIST, then filter by class and take a seeded subset.

    ``rows`` keeps rows [start, stop) after the class filter, in file order: two configs
    with disjoint rows (a private set and a held-out evaluation set) never share an image.
    With ``quality`` (a private set) problems of single records, a class without images and
    an empty selection are counted there, not refused (:class:`DataQuality`).
    """
    if source not in SOURCES:
        raise UserError(f"source is {source!r}: use one of {', '.join(SOURCES)}")
    if split is not None and source != "fashion_mnist":
        raise UserError(f"split is only used with source fashion_mnist: remove split or point path at the {split} data")
    if source == "folder":
        image_set = load_image_folder(path, image_size, channels, class_names, quality)
    elif source == "npz":
        image_set = load_npz(path, image_size, channels, class_names, quality)
    else:
        if class_names is not None and list(class_names) != FASHION_MNIST_CLASSES:
            raise UserError(
                "class_names for fashion_mnist must be left out or be the 10 Fashion-MNIST names: "
                + ", ".join(FASHION_MNIST_CLASSES)
            )
        image_set = load_fashion_mnist(path, split or "train", image_size, channels)
        if quality is not None:
            quality.records_read = len(image_set.images)
    if classes:
        image_set = _filter_classes(image_set, classes, path, quality)
    if rows is not None:
        start, stop = rows
        labels = None if image_set.labels is None else image_set.labels[start:stop]
        image_set = ImageSet(image_set.images[start:stop], labels, image_set.class_names, image_set.source)
    if limit is not None:
        image_set = _subset(image_set, limit, seed)
    if quality is not None:
        quality.found(len(image_set.images), image_set.labels, image_set.class_names)
    elif len(image_set.images) == 0:
        raise UserError(f"no images found in {path}: check path, source and the classes filter")
    return image_set


def may_share_images(a: DataConfig, b: DataConfig) -> bool:
    """Whether two data selections can hold the same image: the one rule that refuses an evaluation reference
    overlapping the private data and decides whether the report may show real reference images.

    Selections are apart when their paths do not overlap (neither is nor holds the other), or when they read the
    same source at the same path and take different Fashion-MNIST splits, disjoint classes, or disjoint ``rows``
    of the same class filter (``limit`` subsets a selection, so it never makes two selections meet).
    Anything else may share images, a path inside another's folder included.
    """
    if not overlaps(a.path, b.path):
        return False
    if a.source != b.source or normalised(a.path) != normalised(b.path):
        return True
    if a.source == "fashion_mnist" and (a.split or "train") != (b.split or "train"):
        return False
    if a.classes and b.classes and not set(a.classes) & set(b.classes):
        return False
    same_filter = set(a.classes or ()) == set(b.classes or ())
    return not (same_filter and a.rows is not None and b.rows is not None
                and (a.rows[1] <= b.rows[0] or b.rows[1] <= a.rows[0]))
