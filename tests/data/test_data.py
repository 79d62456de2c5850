"""Data sources, their splits and the on-disk cache, on real CIFAR-10 JPEGs (../shared/data).

Most tests use a small ImageFolder cut from the archive (100 train + 30 test images per class),
extracted once per session; each test gets its own hard-linked copy and its own cache folder.
"""

import os
import re
import shutil
import socket
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hpsearch
from tests.data.cifar import CIFAR_ARCHIVE, extract_small_cifar
from tests.helpers import ROOT, run_cli, tiny_study
from hpsearch.data import DATASETS, load_splits
from hpsearch.config.schema import DataConfig
from hpsearch.study.studyfile import StudyFileError, load_study

ARCHIVE = CIFAR_ARCHIVE
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_PER_CLASS, TEST_PER_CLASS, SPARE_PER_CLASS = 100, 30, 5

needs_archive = pytest.mark.skipif(not ARCHIVE.exists(), reason=f"{ARCHIVE} is not here")



@pytest.fixture(scope="session")
def small_cifar(tmp_path_factory) -> Path:
    """root/train/<class>/ (100 each), root/test/<class>/ (30 each) and root/spare/<class>/ (5 more
    train images each, never in train/: material for unlabeled/ folders). Extracted once."""
    return extract_small_cifar(tmp_path_factory.mktemp("small-cifar"), TRAIN_PER_CLASS, TEST_PER_CLASS, SPARE_PER_CLASS)


def config(**fields) -> DataConfig:
    return DataConfig(**{"dataset": "imagefolder", "image_size": 16, "probe_size": 100, **fields})


def rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(image.numpy()) for image in images}


def decode(path: Path, size: int) -> torch.Tensor:
    """An independent decode of one 32 px CIFAR JPEG (no crop needed: the images are square)."""
    with Image.open(path) as img:
        img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


# --- splits -----------------------------------------------------------------------------------


def test_imagefolder_eval_is_the_test_split_and_probe_a_stratified_part_of_train(folder):
    splits = load_splits(config(root=str(folder), eval_size=None, probe_size=200))
    assert splits.pretrain.shape == (10 * TRAIN_PER_CLASS, 3, 16, 16)  # pretraining: all of train/
    assert splits.test_images.shape[0] == 10 * TEST_PER_CLASS  # eval_size null: all of test/
    assert splits.pretrain.dtype == torch.uint8 and splits.test_labels.dtype == torch.int64
    assert torch.bincount(splits.probe_labels).tolist() == [20] * 10  # stratified: 200 / 10 classes
    assert rows(splits.probe_images) <= rows(splits.pretrain)  # probe images come from train/
    assert not rows(splits.test_images) & rows(splits.pretrain)  # test/ never reaches pretraining
    assert splits.num_classes == 10 and splits.channels == 3


def test_eval_size_takes_a_stratified_subset_of_test_and_pretrain_size_subsamples_train(folder):
    splits = load_splits(config(root=str(folder), eval_size=50, pretrain_size=300))
    assert torch.bincount(splits.test_labels).tolist() == [5] * 10  # 50 eval images, 5 per class
    assert splits.pretrain.shape[0] == 300


def test_splits_are_seeded(folder):
    first, again = (load_splits(config(root=str(folder), eval_size=50, split_seed=3)) for _ in range(2))
    other = load_splits(config(root=str(folder), eval_size=50, split_seed=4))
    for name in ("probe_images", "probe_labels", "test_images", "pretrain"):
        assert torch.equal(getattr(first, name), getattr(again, name))  # same seed, same splits
    assert not torch.equal(first.probe_images, other.probe_images)  # another seed draws another probe set


def test_classes_are_the_sorted_train_folders_in_every_split(folder):
    shutil.rmtree(folder / "test" / "airplane")  # a test/ without one class keeps the others' indices
    splits = load_splits(config(root=str(folder), eval_size=None, image_size=32))
    # eval_size null keeps test/ in file order: class by class, sorted by the train/ folder names
    assert splits.test_labels.tolist() == [i for i in range(1, 10) for _ in range(TEST_PER_CLASS)]
    cat = CLASSES.index("cat")
    first_cat = splits.test_labels.tolist().index(cat)
    assert torch.equal(splits.test_images[first_cat], decode(folder / "test/cat/0000.jpg", 32))
    probe_cat = splits.probe_images[splits.probe_labels == cat]
    train_cat = torch.stack([decode(p, 32) for p in sorted((folder / "train/cat").iterdir())])
    assert rows(probe_cat) <= rows(train_cat)  # a probe image labelled cat is a train/cat/ image


def test_unlabeled_images_only_reach_pretraining(folder, small_cifar):
    unlabeled = folder / "unlabeled" / "batch-1"  # any depth below unlabeled/
    shutil.copytree(small_cifar / "spare", unlabeled, copy_function=os.link)
    Image.new("L", (40, 24), color=128).save(folder / "unlabeled" / "grey.png")  # grey and not square
    splits = load_splits(config(root=str(folder), eval_size=None))
    extra = 10 * SPARE_PER_CLASS + 1
    assert splits.pretrain.shape == (10 * TRAIN_PER_CLASS + extra, 3, 16, 16)  # grey image made 3-channel
    spare = splits.pretrain[-extra:]  # unlabeled/ comes after train/ when nothing is subsampled
    assert not rows(spare) & (rows(splits.probe_images) | rows(splits.test_images))  # never labelled
    assert splits.num_classes == 10  # unlabeled/ adds no class


def test_imagefolder_validation_is_a_stratified_part_of_train_outside_the_probe(folder):
    splits = load_splits(config(root=str(folder), eval_size=None, probe_size=200, val_size=300))
    assert torch.bincount(splits.val_labels).tolist() == [30] * 10  # stratified: 300 / 10 classes
    assert rows(splits.val_images) <= rows(splits.pretrain)  # train images, seen unlabelled in pretraining
    assert not rows(splits.val_images) & rows(splits.probe_images)  # the probe's labels never score a trial
    assert not rows(splits.val_images) & rows(splits.test_images)
    default = load_splits(config(root=str(folder), eval_size=None, probe_size=200))
    assert len(default.val_labels) == len(default.test_labels) == 10 * TEST_PER_CLASS  # null: as many as test


def test_digits_gets_the_same_three_way_split():
    cfg = DataConfig(dataset="digits", image_size=8, eval_size=400, probe_size=100, val_size=300)
    splits = load_splits(cfg)
    assert (len(splits.test_labels), len(splits.val_labels), len(splits.probe_labels)) == (400, 300, 100)
    assert len(splits.pretrain) == 1797 - 400  # everything but the test split
    assert not rows(splits.test_images) & rows(splits.pretrain)  # test is held out of everything
    assert rows(splits.val_images) <= rows(splits.pretrain) and not rows(splits.val_images) & rows(splits.probe_images)
    assert max(torch.bincount(splits.val_labels).tolist()) - min(torch.bincount(splits.val_labels).tolist()) <= 2
    again, other = load_splits(cfg), load_splits(cfg.model_copy(update={"split_seed": 1}))
    assert torch.equal(again.val_images, splits.val_images)  # seeded
    assert not torch.equal(other.val_images, splits.val_images)


def test_only_the_probe_split_labels_reach_the_online_probe(folder):
    # The label budget is the probe split: every other pretraining image is unlabelled (-1) to it.
    for splits in (load_splits(config(root=str(folder), eval_size=None, probe_size=200)),
                   load_splits(DataConfig(dataset="digits", image_size=8, eval_size=400, probe_size=100))):
        labelled = splits.pretrain_labels >= 0
        assert int(labelled.sum()) == len(splits.probe_labels)
        assert rows(splits.pretrain[labelled]) == rows(splits.probe_images)
        by_image = {bytes(i.numpy()): int(y) for i, y in zip(splits.probe_images, splits.probe_labels)}
        assert all(by_image[bytes(i.numpy())] == int(y)
                   for i, y in zip(splits.pretrain[labelled], splits.pretrain_labels[labelled]))


def test_a_validation_split_that_does_not_fit_names_the_field(folder):
    with pytest.raises(ValueError, match=r"^data\.val_size: expected at most 800 \(the 1000 labelled images not in the probe split\), got 900$"):
        load_splits(config(root=str(folder), eval_size=None, probe_size=200, val_size=900))


# --- cache ------------------------------------------------------------------------------------


def test_second_load_reads_the_cache_and_a_new_image_size_makes_new_entries(folder, cache):
    cfg = config(root=str(folder), eval_size=None)
    first = load_splits(cfg)
    entries = {p: p.stat() for p in cache.glob("*.pt")}
    assert sorted(p.name.split("-")[1] for p in entries) == ["test", "train"]  # one file per split
    again = load_splits(cfg)
    for path, stat in entries.items():
        now = path.stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)  # read, not rewritten
    for name in ("pretrain", "probe_images", "probe_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert set(cache.glob("*.pt")) == set(entries)  # nothing new
    bigger = load_splits(config(root=str(folder), eval_size=None, image_size=24))
    assert bigger.pretrain.shape[-1] == 24
    assert len(set(cache.glob("*.pt")) - set(entries)) == 2  # another size: new train and test entries
    assert not list(cache.glob("*.tmp"))  # written atomically: no temporary file left behind


def test_cache_follows_the_files(folder, small_cifar, cache):
    cfg = config(root=str(folder), eval_size=None)
    load_splits(cfg)
    os.link(small_cifar / "spare/cat/0100.jpg", folder / "train/cat/9999.jpg")
    assert load_splits(cfg).pretrain.shape[0] == 10 * TRAIN_PER_CLASS + 1  # the new file is seen
    assert len(list(cache.glob("imagefolder-train-*.pt"))) == 2  # under a new key
    assert len(list(cache.glob("imagefolder-test-*.pt"))) == 1  # test/ did not change


def test_an_unreadable_cache_entry_is_decoded_again(folder, cache):
    cfg = config(root=str(folder), eval_size=None)
    expected = load_splits(cfg)
    for path in cache.glob("*.pt"):
        path.write_bytes(b"not a tensor file")
    with pytest.warns(UserWarning, match="unreadable data cache"):
        splits = load_splits(cfg)
    assert torch.equal(splits.pretrain, expected.pretrain)
    assert torch.equal(torch.load(next(cache.glob("*train*.pt")), weights_only=True)["images"], expected.pretrain)


def test_a_torchvision_dataset_is_read_resized_and_cached(tmp_path, cache):
    # MNIST's files in torchvision's idx format (torchvision checks only that they exist)
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n)))
    cfg = DataConfig(dataset="MNIST", root=str(tmp_path / "mnist"), image_size=14, eval_size=None, probe_size=40)
    splits = load_splits(cfg)
    assert cfg.dataset == "mnist"  # names are case-insensitive; the schema keeps the canonical one
    assert splits.pretrain.shape == (200, 1, 14, 14) and splits.test_images.shape == (50, 1, 14, 14)
    assert torch.bincount(splits.probe_labels).tolist() == [4] * 10
    assert sorted(p.name.split("-")[1] for p in cache.glob("mnist-*-14px-*.pt")) == ["test", "train"]


# --- missing or malformed data: one line naming the path and what was expected -----------------


@pytest.mark.parametrize("name", sorted(n for n, s in DATASETS.items() if s.can_download))
def test_a_torchvision_dataset_without_files_names_the_expected_path(tmp_path, name):
    expected = tmp_path / DATASETS[name].files.format(split="train")
    with pytest.raises(ValueError, match=rf"^data\.root: no {DATASETS[name].title} data under {tmp_path} "
                                         rf"\(expected {expected}\); download it with data\.download: true") as err:
        load_splits(DataConfig(dataset=name, root=str(tmp_path)))
    assert "\n" not in str(err.value)


def layout_without_train(root: Path) -> None:
    (root / "test" / "cat").mkdir(parents=True)


def layout_without_test(root: Path) -> None:
    (root / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "train" / "cat" / "0.png")


def layout_with_unknown_test_class(root: Path) -> None:
    layout_without_test(root)
    (root / "test" / "dog").mkdir(parents=True)


def layout_with_a_broken_image(root: Path) -> None:
    layout_without_test(root)
    (root / "test" / "cat").mkdir(parents=True)
    (root / "test" / "cat" / "1.jpg").write_bytes(b"not a jpeg")


@pytest.mark.parametrize("make, message", [
    (None, r"^data\.root: {root} is not a folder \(expected {root}/train/<class>/ and {root}/test/<class>/"),
    (layout_without_train, r"^data\.root: no ImageFolder train split under {root} \(expected {root}/train/<class>/"),
    (layout_without_test, r"^data\.root: no ImageFolder test split under {root} \(expected {root}/test/<class>/"),
    (layout_with_unknown_test_class, r"^data\.root: {root}/test/dog/ is a class {root}/train/ does not have"),
    (layout_with_a_broken_image, r"^data\.root: cannot decode {root}/test/cat/1\.jpg .*; expected an image file"),
], ids=["no root", "no train", "no test", "unknown test class", "broken image"])
def test_a_malformed_imagefolder_names_the_path_and_the_layout(tmp_path, make, message):
    root = tmp_path / "images"
    if make:
        make(root)
    with pytest.raises(ValueError, match=message.format(root=re.escape(str(root)))) as err:
        load_splits(config(root=str(root)))
    assert "\n" not in str(err.value)


def test_root_is_required_except_for_digits():
    with pytest.raises(StudyFileError, match=r"data\.root: required for dataset 'cifar10'; expected a folder holding "
                                             r"<root>/cifar-10-batches-py"):
        load_study({"name": "x", "data": {"dataset": "cifar10"}})
    with pytest.raises(ValueError, match=r"^data\.root: required for dataset 'imagefolder'"):
        load_splits(DataConfig.model_construct(dataset="imagefolder", root=None, image_size=16, eval_size=None,
                                               probe_size=10, pretrain_size=None, split_seed=0))
    with pytest.raises(StudyFileError, match=r"data\.download: dataset 'imagefolder' cannot be downloaded"):
        load_study({"name": "x", "data": {"dataset": "imagefolder", "root": "x", "download": True}})
    assert DataConfig().eval_size == 400  # digits has no test split: null means hold out 400 images


def test_split_sizes_beyond_the_source_are_rejected(folder):
    with pytest.raises(ValueError, match=rf"^data\.eval_size: expected at most the {10 * TEST_PER_CLASS} test images"):
        load_splits(config(root=str(folder), eval_size=10 * TEST_PER_CLASS + 1))
    with pytest.raises(ValueError, match=rf"^data\.probe_size: expected at most the {10 * TRAIN_PER_CLASS} labelled"):
        load_splits(config(root=str(folder), probe_size=10 * TRAIN_PER_CLASS + 1))


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


@pytest.mark.skipif(_resolves("www.cs.toronto.edu"), reason="network reachable: the download would really start")
def test_a_failed_download_is_one_line_naming_the_url_and_root(tmp_path):
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    with pytest.raises(ValueError, match=rf"^data\.download: could not download CIFAR10 from {url} into {tmp_path} ") as err:
        load_splits(DataConfig(dataset="cifar10", root=str(tmp_path), download=True))
    assert "\n" not in str(err.value)


# --- through the command and the runner ---------------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_study_files_validate(path):
    load_study(path)


def test_a_bad_root_stops_the_command_with_one_line(tmp_path):
    (tmp_path / "study.yaml").write_text(textwrap.dedent("""
        name: x
        data: {dataset: imagefolder, root: missing/images}
    """))
    result = run_cli("run", "study.yaml", "--workdir", "runs", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert f"data.root: {tmp_path / 'missing/images'} is not a folder (expected " in lines[0]
    assert "/train/<class>/" in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_a_study_on_an_imagefolder_runs_and_names_its_classes_by_folder(folder, tmp_path):
    from mlflow.tracking import MlflowClient

    data = {"dataset": "imagefolder", "root": str(folder), "image_size": 16, "eval_size": 100, "probe_size": 100}
    study = hpsearch.run_study(tiny_study(tmp_path / "runs", n_trials=1, data=data, **{"training.epochs": 1}))
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    assert 0.0 <= study.trials[0].value <= 1.0
    assert study.trials[0].user_attrs["worst_class"]["class"] in CLASSES  # 'cat', not 3
    run = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert {k.removeprefix("class_accuracy/") for k in run.data.metrics if k.startswith("class_accuracy/")} == set(CLASSES)
