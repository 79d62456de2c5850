"""Streaming the pretraining images from their files (data.stream), on real CIFAR-10 JPEGs (../shared/data).

A small ImageFolder (20 train + 5 test images per class) is extracted once per module; each test
gets its own hard-linked copy and its own cache folder. Streamed and in-memory data must give the
same images, the same splits and, on the CPU, the same training bit for bit.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import hpsearch
from tests.data.cifar import CIFAR_ARCHIVE, extract_small_cifar
from tests.helpers import ROOT, tiny_study
from hpsearch.training.checkpoint import load_latest, save
from hpsearch.data import StreamedImages, load_splits, pretrain_batches
from hpsearch.evaluation import Evaluator
from hpsearch.data import streaming
from hpsearch.study.interrupt import Interrupted
from hpsearch.training.pretrain import Pretraining
from hpsearch.config.schema import DataConfig
from hpsearch.study.studyfile import StudyFileError, load_study

ARCHIVE = CIFAR_ARCHIVE
TRAIN_PER_CLASS, TEST_PER_CLASS, SPARE_PER_CLASS = 20, 5, 3



@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory) -> Path:
    """root/train/<class>/ (20 each), root/test/<class>/ (5 each) and root/spare/<class>/ (3 more train
    images each, material for an unlabeled/ folder). Extracted once per module."""
    return extract_small_cifar(tmp_path_factory.mktemp("stream-cifar"), TRAIN_PER_CLASS, TEST_PER_CLASS, SPARE_PER_CLASS)


def config(**fields) -> DataConfig:
    return DataConfig(**{"dataset": "imagefolder", "image_size": 16, "probe_size": 50, **fields})


def both(folder: Path, **fields):
    """The same data in memory and streamed."""
    return (load_splits(config(root=str(folder), stream="never", **fields)),
            load_splits(config(root=str(folder), stream="always", **fields)))


# --- the data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_the_cached_images(folder, small_cifar, workers):
    unlabeled = folder / "unlabeled"
    shutil.copytree(small_cifar / "spare", unlabeled / "batch-1", copy_function=os.link)
    Image.new("L", (40, 24), color=90).save(unlabeled / "grey.png")  # grey and not square: repeated, centre-cropped
    memory, streamed = both(folder, pretrain_size=190, eval_size=30, workers=workers)
    assert isinstance(memory.pretrain, torch.Tensor) and isinstance(streamed.pretrain, StreamedImages)
    assert streamed.pretrain.shape == memory.pretrain.shape == (190, 3, 16, 16) and len(streamed.pretrain) == 190
    for name in ("probe_images", "probe_labels", "val_images", "val_labels", "test_images", "test_labels", "mean", "std",
                 "pretrain_labels"):
        assert torch.equal(getattr(streamed, name), getattr(memory, name)), name  # identical splits and statistics
    order = torch.randperm(190, generator=torch.Generator().manual_seed(1))
    for start, batch_size in ((0, 32), (3, 32), (0, 190)):
        fetched = list(pretrain_batches(streamed.pretrain, order, start, batch_size))
        expected = list(pretrain_batches(memory.pretrain, order, start, batch_size))
        assert len(fetched) == len(expected) == 190 // batch_size - start  # the last partial batch dropped
        for got, want in zip(fetched, expected):
            assert got.dtype == torch.uint8 and torch.equal(got, want)  # bit for bit


def test_auto_streams_only_above_the_memory_limit(folder):
    # 200 pretraining images x 3 x 16 x 16 = 153,600 bytes
    assert isinstance(load_splits(config(root=str(folder), memory_limit_gb=1e-4)).pretrain, StreamedImages)
    assert isinstance(load_splits(config(root=str(folder), memory_limit_gb=2e-4)).pretrain, torch.Tensor)
    assert isinstance(load_splits(config(root=str(folder))).pretrain, torch.Tensor)  # default 4 GB
    never = config(root=str(folder), stream="never", memory_limit_gb=1e-6)
    assert isinstance(load_splits(never).pretrain, torch.Tensor)
    small = config(root=str(folder), memory_limit_gb=1e-4, pretrain_size=100)  # counted after pretrain_size
    assert isinstance(load_splits(small).pretrain, torch.Tensor)


def test_stream_always_on_an_array_source_is_refused():
    for dataset, root in (("cifar10", "data"), ("digits", None)):
        with pytest.raises(StudyFileError) as err:
            load_study({"name": "x", "data": {"dataset": dataset, "root": root, "stream": "always"}})
        message = str(err.value)
        assert "\n" not in message and f"data.stream: dataset {dataset!r} is always held in memory" in message
    load_study({"name": "x", "data": {"dataset": "cifar10", "root": "data", "stream": "never"}})  # allowed


def test_an_undecodable_file_is_one_line_naming_it(folder):
    bad = folder / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=rf"^data\.root: cannot decode {bad} ") as err:
        load_splits(config(root=str(folder), stream="always", workers=2))
    assert "\n" not in str(err.value)


def test_workers_decode_in_their_own_processes(folder, tmp_path, monkeypatch):
    log = tmp_path / "decoders"
    log.mkdir()
    decode = streaming.decode_image

    def logged(path, size):  # forked workers inherit the patch; each notes its pid and thread count
        (log / f"{os.getpid()}-{torch.get_num_threads()}").touch()
        return decode(path, size)

    splits = load_splits(config(root=str(folder), stream="always", workers=2))
    order = torch.randperm(200)
    expected = torch.stack([splits.pretrain.dataset[i] for i in order.tolist()])  # decoded here, in this process
    monkeypatch.setattr(streaming, "decode_image", logged)
    batches = list(pretrain_batches(splits.pretrain, order, 0, 20))
    decoders = {p.name for p in log.iterdir()}
    assert len(decoders) == 2 and all(name.endswith("-1") for name in decoders)  # two workers, one thread each
    workers = {int(name.split("-")[0]) for name in decoders}
    assert os.getpid() not in workers
    assert all(os.getpgid(pid) == pid for pid in workers)  # own process groups: a Ctrl-C reaches only the trainer
    assert torch.equal(torch.cat(batches), expected)
    next(pretrain_batches(splits.pretrain, order, 0, 20))  # the next epoch's pass reuses the same workers
    assert {int(p.name.split("-")[0]) for p in log.iterdir()} == workers


def test_a_killed_worker_fails_one_pass_and_the_next_starts_fresh_workers(folder):
    splits = load_splits(config(root=str(folder), stream="always", workers=2))
    order = torch.randperm(200)
    passes = pretrain_batches(splits.pretrain, order, 0, 20)
    next(passes)
    with pytest.raises(RuntimeError, match="DataLoader worker"):  # raised by PyTorch's SIGCHLD handler or the pass
        for worker in splits.pretrain._loader._iterator._workers:
            os.kill(worker.pid, signal.SIGKILL)  # as the OOM killer would
        time.sleep(1)
        list(passes)
    assert len(list(pretrain_batches(splits.pretrain, order, 0, 20))) == 10  # the next trial trains


INTERRUPTED = """
import signal, sys, time, torch
from hpsearch.data import load_splits, pretrain_batches
from hpsearch.study.interrupt import StopRequest
from hpsearch.config.schema import DataConfig

splits = load_splits(DataConfig(dataset="imagefolder", root=sys.argv[1], image_size=16, probe_size=50,
                                stream="always", workers=2))
order = torch.randperm(200)
with StopRequest() as stop:
    for step, batch in enumerate(pretrain_batches(splits.pretrain, order, 0, 10)):
        print("step", step, flush=True)
        time.sleep(0.1)  # a training step
        if stop.requested:
            break
    rest = list(pretrain_batches(splits.pretrain, order, 0, 10))  # the workers are still there
    alive = [w.is_alive() for w in splits.pretrain._loader._iterator._workers]
print("workers alive:", alive, flush=True)
print("stopped after step", step, "then fetched", len(rest), "batches", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # a terminal's Ctrl-C; a pre-empting scheduler
def test_a_signal_to_the_process_group_leaves_the_workers_to_the_trainer(folder, tmp_path, signum):
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    child = subprocess.Popen([sys.executable, str(script), str(folder)], cwd=ROOT, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stdout.readline().startswith("step 0")
        os.killpg(child.pid, signum)
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert "then fetched 20 batches" in out and "workers alive: [True, True]" in out


# --- training -----------------------------------------------------------------------------------


def study_config(folder: Path, tmp_path: Path, stream: str, **changes):
    cfg = tiny_study(tmp_path / "runs", **{"data": {"dataset": "imagefolder", "root": str(folder), "image_size": 16,
                                                    "probe_size": 50, "stream": stream, "workers": 2},
                                           "training.batch_size": 32, **changes})
    return load_study(cfg)[0]


def train(cfg, epochs: int, state=None) -> tuple[Pretraining, list[float]]:
    session = Pretraining(cfg, load_splits(cfg.data), torch.device("cpu"), seed=3)
    if state is not None:
        session.load_state_dict(state)
    return session, [session.train_epoch().ssl_loss for _ in range(epochs)]


def same_state(a: dict, b: dict) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.values(), b.values())) and a.keys() == b.keys()


def test_training_is_identical_streamed_and_in_memory(folder, tmp_path):
    memory, memory_losses = train(study_config(folder, tmp_path, "never"), epochs=2)
    memory_rng = torch.get_rng_state()
    streamed, streamed_losses = train(study_config(folder, tmp_path, "always"), epochs=2)
    assert isinstance(streamed.splits.pretrain, StreamedImages)
    assert streamed_losses == memory_losses  # bit for bit on the CPU
    assert same_state(streamed.method.state_dict(), memory.method.state_dict())
    assert torch.equal(streamed.generator.get_state(), memory.generator.get_state())
    assert torch.equal(torch.get_rng_state(), memory_rng)  # the DataLoader draws nothing from the global RNG
    probe = [Evaluator.of(session).linear_probe(session.method.backbone) for session in (streamed, memory)]
    assert probe[0] == probe[1]


class StopAfter:
    """A stop request that arrives after `steps` training steps (as a SIGTERM would)."""

    def __init__(self, steps: int):
        self.steps = steps

    @property
    def requested(self) -> bool:
        self.steps -= 1
        return self.steps <= 0

    def check(self) -> None:
        raise Interrupted(signal.SIGTERM)


def test_a_mid_epoch_checkpoint_resumes_identically_when_streaming(folder, tmp_path):
    cfg = study_config(folder, tmp_path, "always", **{"training.epochs": 2})
    reference, reference_losses = train(cfg, epochs=2)
    session = Pretraining(cfg, load_splits(cfg.data), torch.device("cpu"), seed=3)
    session.train_epoch()
    with pytest.raises(Interrupted):
        session.train_epoch(StopAfter(2))  # 6 steps an epoch (200 // 32): stopped after the second
    assert session.state_dict()["mid_epoch"]["position"] == 2
    save(tmp_path / "ckpt", session.epoch, 2, session.state_dict())
    del session
    resumed, losses = train(cfg, epochs=1, state=load_latest(tmp_path / "ckpt"))  # a fresh process would do this
    assert losses == reference_losses[1:]
    assert same_state(resumed.method.state_dict(), reference.method.state_dict())


def test_a_streamed_study_runs_end_to_end_like_one_in_memory(folder, tmp_path):
    values = {}
    for stream in ("never", "always"):
        cfg = tiny_study(tmp_path / stream, n_trials=1, data={"dataset": "imagefolder", "root": str(folder),
                                                              "image_size": 16, "probe_size": 50, "stream": stream,
                                                              "workers": 2}, **{"training.batch_size": 64})
        study = hpsearch.run_study(cfg)
        assert [t.state.name for t in study.trials] == ["COMPLETE"]
        values[stream] = study.trials[0].value
    assert values["always"] == values["never"]
