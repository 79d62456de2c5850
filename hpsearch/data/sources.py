"""Sources: where a dataset's files are, how to check them and how to decode one split."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")



class Source:
    """A dataset a study file can name. `read` returns uint8 [N, C, S, S] images and int64 labels
    (-1 for unlabelled images); `check` raises a one-line ValueError when a split's files are
    missing and returns a cheap fingerprint of them (names, sizes, mtimes) for the cache key."""

    title: str  # the one spelling used in messages
    has_test_split = True
    needs_root = True
    can_download = False
    streams = False  # made of image files that can be decoded one at a time (data.stream)

    def layout(self, root: str) -> str:
        """What a study's data.root must hold, for messages."""
        raise NotImplementedError

    def pretrain_only_splits(self, root: Path) -> list[str]:
        return []

    def check(self, root: Path, split: str, download: bool) -> list:
        raise NotImplementedError

    def read(self, root: Path | None, split: str, image_size: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def files(self, root: Path, split: str) -> tuple[list[str], list[int]]:
        """A streaming source's image files of one split, in `read` order, and their labels."""
        raise NotImplementedError

    def class_names(self, root: Path | None) -> tuple[str, ...] | None:
        """The names of the classes by label index, when the source has them (None: use the index)."""
        return None


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
                                 f"({type(err).__name__}: {first_line(err)})") from None
        if not _present(expected):
            raise ValueError(f"data.root: no {self.title} data under {root} (expected {expected}); "
                             f"download it with data.download: true or point data.root at it")
        return _fingerprint([str(expected)] if expected.is_file() else sorted(str(f) for f in expected.iterdir()), expected)

    def read(self, root, split, image_size):
        try:
            dataset = self._dataset(root, split, download=False)
        except Exception as err:  # torchvision's "Dataset not found or corrupted", unreadable files
            raise ValueError(f"data.root: cannot read {self.title} {split} data under {root} ({first_line(err)}); "
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

    title, streams = "ImageFolder", True

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

    def files(self, root, split):
        return self._list(root, split)

    def class_names(self, root):
        return tuple(self._classes(root))

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


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes decoded as one grey channel; all others as RGB


def decode_image(path: str, image_size: int) -> np.ndarray:
    """PIL-decode one image file: the shorter side resized (antialiased bilinear) to image_size and
    the centre square kept. uint8 [S, S] for a grey image, [S, S, 3] otherwise. The one decode of
    image files: the cache (`_decode`) and streaming (`hpsearch.data.streaming`) both call it, so a
    streamed image equals the cached one bit for bit."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            mode = "L" if img.mode in GREY_MODES else "RGB"
            img.draft(mode, (image_size, image_size))  # JPEG: decode at a reduced scale when much larger
            img = img.convert(mode)
            if img.size != (image_size, image_size):
                img = ImageOps.fit(img, (image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(img)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"data.root: cannot decode {path} ({first_line(err)}); expected an image file") from None


def is_colour(path: str) -> bool:
    """Whether `decode_image` gives this file three channels; reads the header only."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.mode not in GREY_MODES
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"data.root: cannot decode {path} ({first_line(err)}); expected an image file") from None


def as_chw(array: np.ndarray, channels: int) -> Tensor:
    """One decoded image as uint8 [channels, S, S]; a grey image is repeated into 3 channels when
    `channels` is 3 (as the cache does for a split that mixes grey and colour images)."""
    image = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if image.shape[0] != channels:
        image = np.repeat(image, channels, axis=0)
    return torch.from_numpy(np.array(image, order="C"))  # a copy: PIL's arrays are read-only


def _decode(files: list[str], image_size: int) -> Tensor:
    """PIL-decode and resize every file into one uint8 [N, C, S, S] tensor (`decode_image` each).

    Serial on purpose: on this project's 2-core machines a 2-process pool was no faster (measured
    0.91-0.94x under load), and decoding happens once per cache entry.
    """
    arrays = [decode_image(path, image_size) for path in files]
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


