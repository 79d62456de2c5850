"""Small ImageFolders cut from the shared CIFAR-10 JPEG archive, for the data tests."""

import os
import shutil
import tarfile
from pathlib import Path

from tests.helpers import ROOT

CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def extract_small_cifar(root: Path, train: int, test: int, spare: int) -> Path:
    """A small ImageFolder from the shared CIFAR-10 archive: root/train/<class>/ (`train` images each),
    root/test/<class>/ (`test` each) and root/spare/<class>/ (`spare` more train images each, never
    in train/: material for unlabeled/ folders). Skips the test when the archive is not here."""
    import pytest

    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"{CIFAR_ARCHIVE} is not here")
    wanted = {"train": train + spare, "test": test}
    with tarfile.open(CIFAR_ARCHIVE) as tar:
        for member in tar:
            parts = member.name.split("/")  # cifar10/<split>/<class>/NNNN.jpg
            if len(parts) != 4 or not member.isfile() or int(parts[3][:4]) >= wanted[parts[1]]:
                continue
            split = "spare" if parts[1] == "train" and int(parts[3][:4]) >= train else parts[1]
            target = root / split / parts[2] / parts[3]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return root


def linked_copy(source: Path, target: Path) -> Path:
    """train/ and test/ of an ImageFolder, hard-linked: fast, and files may be added or removed."""
    for split in ("train", "test"):
        shutil.copytree(source / split, target / split, copy_function=os.link)
    return target
