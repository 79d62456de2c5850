"""One training step makes no host-device synchronisation, for every registered method (issue 14,
item 3): the GPU is never left waiting for the host inside an epoch.

On the CPU the step runs on the `meta` device, where every op still dispatches with its real
device (tests/training/sync_guard.py): a value read back to the host, a data-dependent shape or a
tensor built on the CPU and copied over each step shows there as it would on CUDA. The GPU-only
test runs the same step under CUDA's own sync detector.
"""

import dataclasses
import itertools

import pytest
import torch

from hpsearch.config.schema import StudyConfig
from hpsearch.data import load_splits, pretrain_batches
from hpsearch.training.pretrain import Pretraining
from objectives import METHODS
from tests.helpers import tiny_study
from tests.training.sync_guard import HostSync, HostSyncGuard

# Where the one intended upload per view comes from: the augmentation parameters, drawn on the CPU
# from the trial's seeded generator and shipped in one packed buffer.
AUGMENT_UPLOAD = "augment/params.py"
# Every augmentation op switched on (the defaults skip blur and solarisation): each is checked.
EVERY_OP = {"blur_p": 0.5, "solarize_p": 0.2, "grayscale_p": 0.2, "jitter_p": 0.8, "flip_p": 0.5}


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return load_splits(StudyConfig.model_validate(tiny_study(tmp_path_factory.mktemp("data"))).data)


def session(tmp_path, splits, name: str, device: torch.device) -> Pretraining:
    """A trial's pretraining of method `name` on `device`, its images there (as the runner puts them)."""
    cfg = StudyConfig.model_validate(tiny_study(
        tmp_path, objective={"method": name}, augment=EVERY_OP,
        search_space={"training.optimizer.lr": {"type": "float", "low": 0.05, "high": 0.5}}))
    on_device = dataclasses.replace(splits, pretrain=splits.pretrain.to(device), mean=splits.mean.to(device),
                                    std=splits.std.to(device))
    return Pretraining(cfg, on_device, device, seed=0)


def first_batch(run: Pretraining) -> torch.Tensor:
    run.method.train()
    run._begin_epoch()  # the epoch's order, and its copy on the device, are made once per epoch
    return next(pretrain_batches(run.splits.pretrain, run._order, 0, run.batch_size))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_training_step_never_synchronises_with_the_host(tmp_path, splits, name):
    run = session(tmp_path, splits, name, torch.device("meta"))
    assert run.online_probe is not None  # the probe's step is part of what is checked
    images = first_batch(run)
    n_views = run.method.n_views + getattr(run.cfg.objective, "n_local_crops", 0)
    # The rule: no device value is read back, no op has a data-dependent size (HostSync otherwise).
    with HostSyncGuard() as guard:
        run.train_step(images)
    # The rule: the only host-to-device copies are the augmentation parameters, one buffer per view.
    others = [(origin, shape) for origin, shape in guard.uploads if not origin.startswith(AUGMENT_UPLOAD)]
    assert others == []
    assert len(guard.uploads) <= n_views, guard.uploads


def test_the_guard_sees_what_it_must():
    # The check itself: each kind of sync it claims to catch is caught (on the meta device).
    x = torch.zeros(8, device="meta")
    cases = {
        "item": lambda: x.sum().item(),
        "bool": lambda: bool(x.sum() > 0),
        "mask index": lambda: x[x > 0],
        "nonzero": lambda: x.nonzero(),
        "to cpu": lambda: x.cpu(),
    }
    for what, make in cases.items():
        with pytest.raises(HostSync), HostSyncGuard():
            make()
    with HostSyncGuard() as guard:
        x + torch.arange(8).to("meta")
    assert len(guard.uploads) == 1 and guard.uploads[0][1] == (8,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_training_step_never_synchronises_on_cuda(tmp_path, splits, name):
    run = session(tmp_path, splits, name, torch.device("cuda"))
    run.method.train()
    run._begin_epoch()
    # Fetched first: pretrain_batches copies the epoch's order to the device once (a blocking copy).
    batches = list(itertools.islice(pretrain_batches(run.splits.pretrain, run._order, 0, run.batch_size), 3))
    run.train_step(batches[0])  # the first step initialises cuBLAS / cuDNN and pinned memory
    run._position += 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising CUDA call raises
    try:
        for images in batches[1:]:
            loss = run.train_step(images)
            run._position += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()
