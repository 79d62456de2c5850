"""Datasets by the name study files use (`data.dataset`) and the three splits a study needs.

A study sees its data as three splits: an unlabelled pretraining set (labels never used), a small
labelled probe set (for the kNN proxy and for training the final linear probe) and a held-out
evaluation set (only the final metric is measured on it). Images stay uint8 until augmentation.

Sources (`DATASETS`, keyed by the lower-case name a study file writes):
- `digits`: scikit-learn's scans; no test split, so eval is held out of the one pool.
- torchvision datasets (`cifar10`, `cifar100`, `stl10`, `svhn`, `mnist`, `fashion_mnist`), read
  from `data.root` and downloaded there only when `data.download` is true.
- `imagefolder`: `root/train/<class>/*`, `root/test/<class>/*` and optionally `root/unlabeled/**`.
A source with a test split gives eval from test, probe from train, pretraining from train plus its
unlabelled split. Its splits are decoded once per image size and cached on disk as uint8 tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
CACHE_FORMAT = 1  # part of every cache key: bump it when what a cache file holds changes


@dataclass
class Splits:
    pretrain: Tensor  # [N, C, H, W] uint8, unlabelled
    probe_images: Tensor  # [P, C, H, W] uint8
    probe_labels: Tensor  # [P] int64
    eval_images: Tensor  # [E, C, H, W] uint8
    eval_labels: Tensor  # [E] int64
    mean: Tensor  # [C] per-channel mean of the pretraining images in [0, 1]
    std: Tensor  # [C]

    @property
    def channels(self) -> int:
        return self.pretrain.shape[1]

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.probe_labels, self.eval_labels]).max()) + 1

    def to(self, device) -> "Splits":
        return Splits(**{k: v.to(device) for k, v in vars(self).items()})


# ----------------------------------------------------------------------------------------------
# Sources: where a dataset's files are, how to check them and how to decode one split.


class Source:
    """A dataset a study file can name. `read` returns uint8 [N, C, S, S] images and int64 labels
    (-1 for unlabelled images); `check` raises a one-line ValueError when a split's files are
    missing and returns a cheap fingerprint of them (names, sizes, mtimes) for the cache key."""

    title: str  # the one spelling used in messages
    has_test_split = True
    needs_root = True
    can_download = False

    def layout(self, root: str) -> str:
        """What a study's data.root must hold, for messages."""
        raise NotImplementedError

    def pretrain_only_splits(self, root: Path) -> list[str]:
        return []

    def check(self, root: Path, split: str, download: bool) -> list:
        raise NotImplementedError

    def read(self, root: Path | None, split: str, image_size: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Digits(Source):
    """scikit-learn's 1,797 8x8 handwritten digit scans (16 grey levels), upsampled to image_size."""

    title, has_test_split, needs_root = "digits", False, False

    def layout(self, root: str) -> str:
        return "nothing: digits ship with scikit-learn"

    def read(self, root, split, image_size):
        from sklearn.datasets import load_digits as sklearn_digits

        digits = sklearn_digits()
        images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        return images.clamp(0, 1).mul(255).round().to(torch.uint8), torch.from_numpy(digits.target).long()


@dataclass(frozen=True)
class Torchvision(Source):
    """A `torchvision.datasets` class whose decoded arrays are read whole (no per-image PIL)."""

    title: str  # also the torchvision class name
    files: str  # what torchvision needs under root; "{split}" is replaced by the split's name
    split_arg: str = "train"  # "train": train=True/False; "split": split="train"/"test"/...
    extra: tuple[str, ...] = ()  # unlabelled splits added to pretraining
    channels_last: bool = False  # CIFAR's arrays are [N, H, W, C]
    can_download = True

    def layout(self, root: str) -> str:
        return " and ".join(sorted({f"{root}/{self.files.format(split=s)}" for s in ("train", "test")}))

    def pretrain_only_splits(self, root):
        return list(self.extra)

    def check(self, root, split, download):
        expected = root / self.files.format(split=split)
        if not _present(expected) and download:
            try:
                self._dataset(root, split, download=True)
            except Exception as err:  # urllib, checksum and archive errors all end here
                raise ValueError(f"data.download: could not download {self.title} from {self._url(split)} into {root} "
                                 f"({type(err).__name__}: {_first_line(err)})") from None
        if not _present(expected):
            raise ValueError(f"data.root: no {self.title} data under {root} (expected {expected}); "
                             f"download it with data.download: true or point data.root at it")
        return _fingerprint([str(expected)] if expected.is_file() else sorted(str(f) for f in expected.iterdir()), expected)

    def read(self, root, split, image_size):
        try:
            dataset = self._dataset(root, split, download=False)
        except Exception as err:  # torchvision's "Dataset not found or corrupted", unreadable files
            raise ValueError(f"data.root: cannot read {self.title} {split} data under {root} ({_first_line(err)}); "
                             f"expected the files torchvision downloads, e.g. with data.download: true") from None
        images = torch.as_tensor(np.asarray(dataset.data))
        if images.ndim == 3:
            images = images.unsqueeze(1)
        elif self.channels_last:
            images = images.permute(0, 3, 1, 2)
        labels = getattr(dataset, "targets", None)
        labels = dataset.labels if labels is None else labels
        return _resize(images.contiguous(), image_size), torch.as_tensor(np.asarray(labels), dtype=torch.int64)

    def _dataset(self, root: Path, split: str, download: bool):
        import torchvision.datasets

        cls = getattr(torchvision.datasets, self.title)
        where = {"train": split == "train"} if self.split_arg == "train" else {"split": split}
        return cls(str(root), download=download, **where)

    def _url(self, split: str) -> str:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, self.title)
        if hasattr(cls, "split_list"):
            return cls.split_list[split][0]
        return getattr(cls, "url", None) or cls.mirrors[0]


class ImageFolder(Source):
    """Image files in class folders, decoded with PIL: the shorter side is resized to image_size
    (antialiased bilinear) and the centre square kept. Grey images stay one channel unless the
    dataset mixes them with colour ones. Class indices follow the sorted train/ folder names."""

    title = "ImageFolder"

    def layout(self, root: str) -> str:
        return f"{root}/train/<class>/ and {root}/test/<class>/ folders of images (and optionally {root}/unlabeled/)"

    def pretrain_only_splits(self, root):
        return ["unlabeled"] if (root / "unlabeled").is_dir() else []

    def check(self, root, split, download):
        files, _ = self._list(root, split)
        return [self._classes(root), *_fingerprint(files, root)]  # class names too: they fix the label indices

    def read(self, root, split, image_size):
        files, labels = self._list(root, split)
        return _decode(files, image_size), torch.tensor(labels, dtype=torch.int64)

    def _classes(self, root: Path) -> list[str]:
        if not root.is_dir():
            raise ValueError(f"data.root: {root} is not a folder (expected {self.layout(str(root))})")
        train = root / "train"
        classes = sorted(e.name for e in os.scandir(train) if e.is_dir() and not e.name.startswith(".")) if train.is_dir() else []
        if not classes:
            raise ValueError(f"data.root: no ImageFolder train split under {root} "
                             f"(expected {train}/<class>/ folders of images, one per class)")
        return classes

    def _list(self, root: Path, split: str) -> tuple[list[str], list[int]]:
        classes = self._classes(root)
        folder = root / split
        if split == "unlabeled":
            files = _image_files(folder)
            if not files:
                raise ValueError(f"data.root: no images in {folder} (expected {'/'.join(IMAGE_EXTENSIONS)} files)")
            return files, [-1] * len(files)
        if not folder.is_dir():
            raise ValueError(f"data.root: no ImageFolder {split} split under {root} "
                             f"(expected {folder}/<class>/ folders named like those in {root}/train/)")
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        if unknown := sorted(set(found) - set(classes)):
            raise ValueError(f"data.root: {folder}/{unknown[0]}/ is a class {root}/train/ does not have "
                             f"(expected the class folders of train/: {', '.join(classes)})")
        files, labels = [], []
        for index, name in enumerate(classes):
            in_class = _image_files(folder / name)
            if not in_class and (split == "train" or name in found):
                raise ValueError(f"data.root: no images in {folder / name} (expected {'/'.join(IMAGE_EXTENSIONS)} files)")
            files += in_class
            labels += [index] * len(in_class)
        if not files:
            raise ValueError(f"data.root: no images under {folder} (expected {folder}/<class>/ folders of images)")
        return files, labels


DATASETS: dict[str, Source] = {
    "digits": Digits(),
    "cifar10": Torchvision("CIFAR10", "cifar-10-batches-py", channels_last=True),
    "cifar100": Torchvision("CIFAR100", "cifar-100-python", channels_last=True),
    "stl10": Torchvision("STL10", "stl10_binary", split_arg="split", extra=("unlabeled",)),
    "svhn": Torchvision("SVHN", "{split}_32x32.mat", split_arg="split"),
    "mnist": Torchvision("MNIST", "MNIST/raw"),
    "fashion_mnist": Torchvision("FashionMNIST", "FashionMNIST/raw"),
    "imagefolder": ImageFolder(),
}


def _image_files(folder: Path) -> list[str]:
    """Image files anywhere below `folder`, in a fixed (sorted) order; hidden files skipped.
    Plain strings: pathlib costs ~25 us a file, seconds for a 60,000-image folder."""
    found = []
    for parent, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(parent, n) for n in sorted(names)
                  if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
    return found


def _present(path: Path) -> bool:
    """A file, or a folder with something in it (a failed download can leave an empty one)."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _fingerprint(files: list[str], base: Path) -> list:
    """Path below `base`, size and mtime of each file: changes when the data is replaced; one stat a file."""
    skip = len(str(base)) + 1
    return [[f[skip:] or os.path.basename(f), s.st_size, s.st_mtime_ns] for f in files for s in [os.stat(f)]]


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _decode(files: list[str], image_size: int) -> Tensor:
    """PIL-decode and resize every file into one uint8 [N, C, S, S] tensor.

    Serial on purpose: on this project's 2-core machines a 2-process pool was no faster (measured
    0.91-0.94x under load), and decoding happens once per cache entry.
    """
    from PIL import Image, ImageOps

    arrays = []
    for path in files:
        try:
            with Image.open(path) as img:
                mode = "L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
                img.draft(mode, (image_size, image_size))  # JPEG: decode at a reduced scale when much larger
                img = img.convert(mode)
                if img.size != (image_size, image_size):
                    img = ImageOps.fit(img, (image_size, image_size), Image.Resampling.BILINEAR)
                arrays.append(np.asarray(img))
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"data.root: cannot decode {path} ({_first_line(err)}); expected an image file") from None
    if any(a.ndim == 3 for a in arrays):
        arrays = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    else:
        arrays = [a[:, :, None] for a in arrays]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _resize(images: Tensor, image_size: int, chunk: int = 2048) -> Tensor:
    """Antialiased bilinear resize of uint8 [N, C, H, W] to image_size, in chunks to bound memory."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    out = [F.interpolate(part.float(), size=(image_size, image_size), mode="bilinear", antialias=True,
                         align_corners=False).round().clamp(0, 255).to(torch.uint8) for part in images.split(chunk)]
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# The on-disk cache of decoded splits.


def cache_dir(configured: str | None) -> Path:
    """data.cache_dir, else $HPSEARCH_CACHE, else ~/.cache/hpsearch."""
    return Path(configured or os.environ.get("HPSEARCH_CACHE") or Path.home() / ".cache" / "hpsearch").expanduser()


def cache_path(directory: Path, name: str, root: Path, split: str, image_size: int, fingerprint: list) -> Path:
    key = json.dumps([CACHE_FORMAT, name, str(root), split, image_size, fingerprint], separators=(",", ":"))
    return directory / f"{name}-{split}-{image_size}px-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def load_split(name: str, root: Path, split: str, image_size: int, *, download: bool, directory: Path) -> tuple[Tensor, Tensor]:
    """One split of a source, from the cache when an entry for these files and this size exists."""
    source = DATASETS[name]
    path = cache_path(directory, name, root, split, image_size, source.check(root, split, download))
    try:
        cached = torch.load(path, weights_only=True)
        return cached["images"], cached["labels"]
    except FileNotFoundError:
        pass
    except Exception as err:  # truncated or foreign file: decode again and overwrite it
        warnings.warn(f"hpsearch: ignoring unreadable data cache {path} ({_first_line(err)})", stacklevel=2)
    images, labels = source.read(root, split, image_size)
    try:
        _save_atomically({"images": images, "labels": labels}, path)
    except OSError as err:
        warnings.warn(f"hpsearch: cannot write the data cache {path} ({err.strerror or err}); continuing without it", stacklevel=2)
    return images, labels


def _save_atomically(obj, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; other users of a shared cache read it too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------
# Splitting.


def stratified_pick(labels: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..len(labels)-1 into (rest, picked) with `size` picked, each class in proportion.

    Per-class quotas use largest remainders, so they sum to exactly `size`.
    """
    classes, class_counts = np.unique(labels, return_counts=True)
    exact = class_counts * size / len(labels)
    quotas = np.floor(exact).astype(int)
    quotas[np.argsort(quotas - exact)[: size - quotas.sum()]] += 1
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quotas)])
    return np.setdiff1d(np.arange(len(labels)), picked), np.sort(picked)


def make_splits(images: Tensor, labels: Tensor, *, probe_size: int, eval_size: int,
                pretrain_size: int | None, seed: int) -> Splits:
    """For a source without a test split: eval is held out of everything; probe and pretrain come from the rest.

    The probe set is a labelled subset of the pretraining pool, as in the usual SSL protocol where
    the encoder has seen the (unlabelled) images the probe is later trained on.
    """
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    pool, held_out = stratified_pick(y, eval_size, rng)
    if probe_size >= len(pool):
        raise ValueError(f"probe_size {probe_size} must be smaller than the {len(pool)} images left after the eval split")
    _, probe = stratified_pick(y[pool], probe_size, rng)
    probe = pool[probe]
    if pretrain_size is not None and pretrain_size < len(pool):
        pool = np.sort(rng.choice(pool, size=pretrain_size, replace=False))
    pool, probe, held_out = (torch.from_numpy(i) for i in (pool, probe, held_out))
    return _splits(images[pool], images[probe], labels[probe], images[held_out], labels[held_out])


def make_train_test_splits(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], unlabeled: list[Tensor], *,
                           probe_size: int, eval_size: int | None, pretrain_size: int | None, seed: int) -> Splits:
    """For a source with a test split: eval is a stratified subset of test (all of it when eval_size is
    None), probe a stratified subset of train, pretraining is train plus `unlabeled`, subsampled to
    pretrain_size. All draws come from one generator seeded with `seed`, in that order."""
    rng = np.random.default_rng(seed)
    (train_x, train_y), (test_x, test_y) = train, test
    held_out = np.arange(len(test_y)) if eval_size is None else stratified_pick(test_y.numpy(), eval_size, rng)[1]
    probe = torch.from_numpy(stratified_pick(train_y.numpy(), probe_size, rng)[1])
    channels = max(t.shape[1] for t in (train_x, test_x, *unlabeled))
    train_x, test_x, *unlabeled = [t.expand(-1, channels, -1, -1) for t in (train_x, test_x, *unlabeled)]
    pretrain = torch.cat([train_x, *unlabeled]) if unlabeled else train_x
    if pretrain_size is not None and pretrain_size < len(pretrain):
        pretrain = pretrain[torch.from_numpy(np.sort(rng.choice(len(pretrain), size=pretrain_size, replace=False)))]
    held_out = torch.from_numpy(held_out)
    return _splits(pretrain.contiguous(), train_x[probe].contiguous(), train_y[probe],
                   test_x[held_out].contiguous(), test_y[held_out])


def _splits(pretrain: Tensor, probe_images: Tensor, probe_labels: Tensor, eval_images: Tensor, eval_labels: Tensor) -> Splits:
    """Assemble Splits with the pretraining images' per-channel mean and std, computed exactly from a
    histogram of the uint8 values (~7x faster than converting 50,000 CIFAR images to float)."""
    counts = torch.stack([torch.bincount(pretrain[:, c].reshape(-1), minlength=256) for c in range(pretrain.shape[1])])
    counts, value = counts.double(), torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum(dim=1)
    mean = counts @ value / n
    std = ((counts @ value.square() - n * mean.square()) / (n - 1)).clamp_min(0).sqrt()
    return Splits(pretrain=pretrain, probe_images=probe_images, probe_labels=probe_labels, eval_images=eval_images,
                  eval_labels=eval_labels, mean=mean.float(), std=std.float().clamp_min(1e-3))


def load_splits(data_cfg) -> Splits:
    """Load `data_cfg.dataset` at `data_cfg.image_size` and split it as the study file says.

    Raises ValueError with a one-line message naming the field and what was expected when the
    data is missing or the split sizes do not fit it.
    """
    name = data_cfg.dataset.lower()
    source = DATASETS[name]
    size, eval_size, probe_size = data_cfg.image_size, data_cfg.eval_size, data_cfg.probe_size
    if not source.has_test_split:
        images, labels = source.read(None, "all", size)
        if eval_size is None:
            raise ValueError(f"data.eval_size: {source.title} has no test split; expected the number of images to hold out, got null")
        if eval_size + probe_size >= len(labels):
            raise ValueError(f"data: eval_size + probe_size ({eval_size} + {probe_size}) must be below "
                             f"the {len(labels)} images of {source.title!r}")
        return make_splits(images, labels, probe_size=probe_size, eval_size=eval_size,
                           pretrain_size=data_cfg.pretrain_size, seed=data_cfg.split_seed)
    if data_cfg.root is None:
        raise ValueError(f"data.root: required for dataset {name!r}; expected a folder holding {source.layout('<root>')}")
    root = Path(data_cfg.root).expanduser().resolve()
    where = dict(download=data_cfg.download, directory=cache_dir(data_cfg.cache_dir))
    train = load_split(name, root, "train", size, **where)
    test = load_split(name, root, "test", size, **where)
    if eval_size is not None and eval_size > len(test[1]):
        raise ValueError(f"data.eval_size: expected at most the {len(test[1])} test images of {source.title} "
                         f"(or null for all of them), got {eval_size}")
    if probe_size > len(train[1]):
        raise ValueError(f"data.probe_size: expected at most the {len(train[1])} labelled train images of {source.title}, "
                         f"got {probe_size}")
    unlabeled = [load_split(name, root, split, size, **where)[0] for split in source.pretrain_only_splits(root)]
    return make_train_test_splits(train, test, unlabeled, probe_size=probe_size, eval_size=eval_size,
                                  pretrain_size=data_cfg.pretrain_size, seed=data_cfg.split_seed)
