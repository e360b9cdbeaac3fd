"""CIFAR-10, CIFAR-100 and the offline `synthetic` dataset, as uint8 arrays.

CIFAR comes from the standard extracted folder (`cifar-10-batches-py/`,
`cifar-100-python/`) in the data directory. When it is missing, the official
archive is downloaded with torchvision's helpers, which verify its published MD5
and show a progress bar. A folder that is already there is read as is (people copy
it from shared storage) but every file is validated: present, a readable batch,
the right shapes, labels in range.
"""

from __future__ import annotations

import os
import pickle
import socket
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from platformdirs import user_cache_dir

from cifartui.config import DatasetConfig

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle",
    "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon",
    "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe",
    "whale", "willow_tree", "wolf", "woman", "worm",
)
CIFAR100_SUPERCLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)


@dataclass(frozen=True)
class Archive:
    """Where an official archive comes from and what it unpacks to."""

    url: str
    filename: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str


class _TorchvisionArchives(dict):
    """The CIFAR archives, by dataset name, from torchvision's own URLs and published MD5s
    (so they stay in one place), read on first use: importing torchvision takes about two
    seconds, which a run on the synthetic set never needs. Entries set by hand stay."""

    def _fill(self) -> None:
        if getattr(self, "_filled", False):
            return
        self._filled = True
        from torchvision.datasets import CIFAR10, CIFAR100

        for name, source in (("cifar10", CIFAR10), ("cifar100", CIFAR100)):
            self.setdefault(name, Archive(source.url, source.filename, source.tgz_md5, source.base_folder,
                                          tuple(file for file, _ in source.train_list), source.test_list[0][0],
                                          source.meta["filename"]))

    def __missing__(self, key: str) -> Archive:
        self._fill()
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        self._fill()
        return dict.__contains__(self, key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self._fill()
        return dict.get(self, key, default)


ARCHIVES: dict[str, Archive] = _TorchvisionArchives()


DOWNLOAD_TIMEOUT_S = 60


class DataError(Exception):
    """The data on disk is missing, truncated or malformed; the message names the file."""


class DataUnavailable(DataError):
    """CIFAR is not on disk and cannot be downloaded."""


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 arrays in NCHW layout, labels as int64."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    superclass_names: tuple[str, ...] = ()
    superclass_of: tuple[int, ...] = ()  # CIFAR-100 fine labels: the superclass of each class

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def default_data_dir() -> Path:
    """$CIFARTUI_DATA, else the user's cache directory."""
    return Path(os.environ.get("CIFARTUI_DATA") or Path(user_cache_dir("cifartui")) / "data")


def load_dataset(config: DatasetConfig, data_dir: Path | None = None, *, download: bool = True,
                 log: Any = None) -> Dataset:
    """The dataset a config names, downloading CIFAR on first use."""
    if config.name == "synthetic":
        return make_synthetic(config.classes, config.train_size, config.test_size, config.data_seed)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return load_cifar(config.name, root, coarse=config.labels == "coarse", download=download, log=log)


# --- reading the standard folder -------------------------------------------------------------

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; only numpy arrays and plain containers may come out of one."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays")
        if module == "_codecs":
            import codecs
            return codecs.encode
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        import importlib
        return getattr(importlib.import_module(module), name)


def _unpickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: missing (expected the standard CIFAR layout)")
    try:
        with path.open("rb") as handle:
            content = _BatchUnpickler(handle, encoding="latin1").load()
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
    except Exception as error:  # noqa: BLE001 - a damaged pickle can fail in any way; only arrays come out
        # (an overflowing frame length, an unknown codec, a bad opcode, a huge allocation, ...)
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise DataError(f"{path}: not a readable CIFAR batch file (truncated or corrupted?): "
                        f"{type(error).__name__}{': ' + detail if detail else ''}") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a dictionary of arrays, found {type(content).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in content.items()}


def _read_batch(path: Path, label_key: str, num_classes: int, *,
                coarse_into: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one batch file; CIFAR-100's coarse labels too, into `coarse_into`."""
    try:
        return _read_batch_content(path, label_key, num_classes, coarse_into)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever a damaged file does, the message names it
        raise DataError(f"{path}: not a usable CIFAR batch: {type(error).__name__}: {error}") from None


def _read_batch_content(path: Path, label_key: str, num_classes: int,
                        coarse_into: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if coarse_into is not None and "coarse_labels" in batch:
        try:
            coarse_into.append(np.asarray(batch["coarse_labels"], dtype=np.int64).reshape(-1))
        except (TypeError, ValueError, OverflowError):
            pass  # superclass views are then left out; training does not need them
    for key in ("data", label_key):
        if key not in batch:
            raise DataError(f"{path}: no '{key}' entry (keys: {', '.join(sorted(batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {dtype} {shape}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: '{label_key}' is not a list of integers") from None
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must lie in [0, {num_classes - 1}], "
                        f"found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_names(path: Path, key: str, expected: tuple[str, ...]) -> tuple[str, ...]:
    """Class names from the meta file when it is present and sane, else the published ones."""
    if not path.is_file():
        return expected
    meta = _unpickle(path)
    names = meta.get(key)
    if not isinstance(names, list) or len(names) != len(expected):
        raise DataError(f"{path}: '{key}' should list {len(expected)} names")
    decoded = []
    for index, name in enumerate(names):
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}: '{key}'[{index}] is not UTF-8 text ({error.reason} at byte "
                                f"{error.start})") from None
        decoded.append(str(name))
    return tuple(decoded)


def read_cifar_folder(name: str, folder: Path, *, coarse: bool = False) -> Dataset:
    """Read and validate a standard extracted CIFAR folder."""
    archive = ARCHIVES[name]
    if name == "cifar10":
        label_key, classes, supers = "labels", CIFAR10_CLASSES, ()
        classes = _read_names(folder / archive.meta_file, "label_names", classes)
    else:
        label_key = "coarse_labels" if coarse else "fine_labels"
        fine = _read_names(folder / archive.meta_file, "fine_label_names", CIFAR100_CLASSES)
        supers = _read_names(folder / archive.meta_file, "coarse_label_names", CIFAR100_SUPERCLASSES)
        classes = supers if coarse else fine
    coarse_labels: list[np.ndarray] | None = [] if name == "cifar100" and not coarse else None
    parts = [_read_batch(folder / f, label_key, len(classes), coarse_into=coarse_labels) for f in archive.train_files]
    train_images = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    test_images, test_labels = _read_batch(folder / archive.test_file, label_key, len(classes),
                                           coarse_into=coarse_labels)
    superclass_of: tuple[int, ...] = ()
    if coarse_labels is not None and len(coarse_labels) == len(archive.train_files) + 1:
        superclass_of = _superclass_of(np.concatenate([train_labels, test_labels]), np.concatenate(coarse_labels),
                                       len(classes), len(supers))
    return Dataset(name, train_images, train_labels, test_images, test_labels, classes, supers, superclass_of)


def _superclass_of(fine: np.ndarray, coarse: np.ndarray, classes: int, superclasses: int) -> tuple[int, ...]:
    """Each fine class's superclass, from the coarse labels stored beside the fine ones."""
    if len(coarse) != len(fine) or (len(coarse) and (coarse.min() < 0 or coarse.max() >= superclasses)):
        return ()
    mapping = [-1] * classes
    for fine_label, coarse_label in zip(fine.tolist(), coarse.tolist()):
        if mapping[fine_label] not in (-1, coarse_label):
            return ()  # one class in two superclasses: not the standard labelling
        mapping[fine_label] = coarse_label
    return tuple(mapping) if -1 not in mapping else ()


OFFLINE_HELP = """\
{name} is not in {root} and could not be downloaded ({reason}).
To fix this, do one of:
  - copy the extracted folder '{folder}' (from another machine, shared storage or another
    tool's cache) into {root};
  - point to a directory that holds it with --data-dir DIR or the CIFARTUI_DATA variable;
  - put the archive {filename} (MD5 {md5}) in {root} and run again;
  - train offline on generated images with --dataset synthetic."""


def load_cifar(name: str, root: Path, *, coarse: bool = False, download: bool = True, log: Any = None) -> Dataset:
    """CIFAR from `root`, downloading and verifying the official archive if needed."""
    archive = ARCHIVES[name]
    folder = root / archive.folder
    if not folder.is_dir():
        if not download:
            raise DataUnavailable(OFFLINE_HELP.format(name=name, root=root, reason="downloads are off",
                                                      folder=archive.folder, filename=archive.filename,
                                                      md5=archive.md5))
        if log:
            log(f"Downloading {archive.url} into {root}")
        previous_timeout = socket.getdefaulttimeout()
        # urllib waits forever by default; a black-holed network should fail, not hang.
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            root.mkdir(parents=True, exist_ok=True)
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(archive.url, str(root), filename=archive.filename, md5=archive.md5)
        except (urllib.error.URLError, socket.timeout) as error:
            reason = getattr(error, "reason", error)
            raise DataUnavailable(OFFLINE_HELP.format(name=name, root=root, reason=f"no network: {reason}",
                                                      folder=archive.folder, filename=archive.filename,
                                                      md5=archive.md5)) from None
        except RuntimeError as error:
            # torchvision raises RuntimeError when the MD5 of the archive does not match.
            raise DataError(f"{root / archive.filename}: {error} Its MD5 is not the published "
                            f"{archive.md5}: the download was incomplete or altered. Run again to "
                            "download it again.") from None
        except OSError as error:
            raise DataError(f"{root}: cannot download or extract {archive.filename}: "
                            f"{error.strerror or error}") from None
        finally:
            socket.setdefaulttimeout(previous_timeout)
        if not folder.is_dir():
            raise DataError(f"{root / archive.filename}: the archive did not contain '{archive.folder}/'")
    return read_cifar_folder(name, folder, coarse=coarse)


# --- synthetic --------------------------------------------------------------------------------

NOISE = 0.35  # per-pixel noise, in units of the [0, 1] intensity range


def make_synthetic(classes: int, train_size: int, test_size: int, seed: int = 0) -> Dataset:
    """CIFAR-shaped images generated offline, deterministic by seed, learnable.

    Each class has two prototypes made of coloured Gaussian blobs and an oriented
    stripe pattern; an image is one of its class's prototypes, shifted by up to 3
    pixels, with random contrast, brightness and per-pixel noise. A small CNN
    learns it quickly but not instantly.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    prototypes = np.empty((classes, 2, 3, 32, 32), dtype=np.float32)
    for c in range(classes):
        for mode in range(2):
            image = np.broadcast_to(rng.uniform(0.2, 0.8, size=(3, 1, 1)), (3, 32, 32)).copy()
            for _ in range(3):
                cy, cx = rng.uniform(4, 28, size=2)
                radius = rng.uniform(3, 7)
                blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))
                image += rng.uniform(-0.6, 0.6, size=(3, 1, 1)) * blob
            angle = rng.uniform(0, np.pi)
            frequency = rng.uniform(0.3, 0.9)
            stripes = np.sin(frequency * (np.cos(angle) * xx + np.sin(angle) * yy))
            image += rng.uniform(-0.15, 0.15, size=(3, 1, 1)) * stripes
            prototypes[c, mode] = image

    def sample(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, size=count)
        modes = rng.integers(0, 2, size=count)
        # A distractor from another class is blended in, so classes overlap and
        # accuracy climbs over a few epochs instead of jumping to 100%.
        others = (labels + rng.integers(1, classes, size=count)) % classes
        weight = rng.uniform(0.55, 0.75, size=(count, 1, 1, 1)).astype(np.float32)
        images = weight * prototypes[labels, modes] + (1 - weight) * prototypes[others, rng.integers(0, 2, size=count)]
        shifts = rng.integers(-3, 4, size=(count, 2))
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                chosen = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                if chosen.any():
                    images[chosen] = np.roll(images[chosen], (dy, dx), axis=(2, 3))
        contrast = rng.uniform(0.6, 1.4, size=(count, 1, 1, 1)).astype(np.float32)
        brightness = rng.uniform(-0.2, 0.2, size=(count, 1, 1, 1)).astype(np.float32)
        images = (images - 0.5) * contrast + 0.5 + brightness
        images += rng.normal(0.0, NOISE, size=images.shape).astype(np.float32)
        return np.clip(images * 255.0, 0, 255).astype(np.uint8), labels.astype(np.int64)

    train_images, train_labels = sample(train_size)
    test_images, test_labels = sample(test_size)
    names = tuple(f"class_{i:02d}" for i in range(classes))
    return Dataset("synthetic", train_images, train_labels, test_images, test_labels, names)


def split_validation(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation parts, a seeded random split."""
    order = np.random.default_rng(seed).permutation(count)
    held_out = int(round(count * fraction))
    return np.sort(order[held_out:]), np.sort(order[:held_out])
