"""A trial on a GPU, checked on the CPU (issue 14, items 1 and 7): a checkpoint resumes whatever the
training device, out-of-memory errors of cuBLAS and cuDNN are classified as `oom`, and a trial's
model is freed when the trial ends, failed or not."""

import gc
import weakref

import optuna
import pytest
import torch

import hpsearch
from hpsearch.config.schema import StudyConfig
from hpsearch.data import load_splits
from hpsearch.study.interrupt import StopRequest
from hpsearch.study.ddp_trial import Solo
from hpsearch.study.trial import TrialContext, _is_out_of_memory, _resume, _Saved
from hpsearch.tracking.tracker import Tracker
from hpsearch.training import checkpoint
from hpsearch.training.pretrain import Pretraining
from tests.helpers import tiny_study


def tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors(v)


def test_a_checkpoint_resumes_whatever_the_training_device(tmp_path, monkeypatch):
    # Item 1. `meta` stands for the GPU. A checkpoint mapped to the training device put the RNG
    # states there too, which Generator.set_state and torch.set_rng_state refuse (on CUDA:
    # "TypeError: RNG state must be a torch.ByteTensor"): every continuation failed on a GPU.
    # (Mapped to meta, which holds no data, even the weights cannot be restored.)
    loaded = []
    load_latest = checkpoint.load_latest
    monkeypatch.setattr(checkpoint, "load_latest", lambda *a, **k: loaded.append(load_latest(*a, **k)) or loaded[-1])
    cfg = StudyConfig.model_validate(tiny_study(tmp_path, training={"epochs": 3, "batch_size": 128}))
    splits = load_splits(cfg.data)
    trained = Pretraining(cfg, splits, torch.device("cpu"), seed=0)
    trained.train_epoch()
    directory = tmp_path / "checkpoints" / "trial-0"
    checkpoint.save(directory, trained.epoch, trained.scheduler.last_epoch,
                    {"training": trained.state_dict(), "history": [{"epoch": 1, "ssl_loss": 1.0}]})
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "resume", tmp_path / "mlartifacts")
    study_run = tracker.client.create_run(tracker.experiment_id).info.run_id
    run = tracker.trial_run(study_run, 0, {}, [])
    trial = optuna.create_study().ask()
    trial.set_user_attr("checkpoint_key", "trial-0")  # as run_trial's _open_run sets it
    ctx = TrialContext(cfg, splits, torch.device("meta"), tracker, study_run, tmp_path / "checkpoints", StopRequest(),
                       on_epoch=lambda *args: None, say=lambda line: None)
    resumed = Pretraining(cfg, splits, torch.device("cpu"), seed=1)  # another seed: the checkpoint must set it all
    _resume(trial, run, _Saved(directory, resumed), ctx, Solo())
    run.finish("COMPLETE")
    # The rule: checkpoints are read on the CPU (load_state_dict moves the weights to the model's
    # device), so the generator states are CPU byte tensors.
    assert all(t.device.type == "cpu" for t in tensors(loaded[0]))
    assert loaded[0]["training"]["generator"].dtype == torch.uint8
    # The rule: the trial continues from the checkpoint, bit for bit as if never stopped.
    assert resumed.epoch == 1
    assert resumed.train_epoch().ssl_loss == trained.train_epoch().ssl_loss
    assert torch.equal(resumed.generator.get_state(), trained.generator.get_state())


@pytest.mark.parametrize(("message", "oom"), [
    ("CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
    ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", True),
    ("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory", True),
    ("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, ...)`", False),
    ("mat1 and mat2 shapes cannot be multiplied (4x3 and 4x3)", False),
])
def test_library_allocation_failures_are_out_of_memory(message, oom):
    # Item 7. cuBLAS and cuDNN report a failed allocation in their own words (the messages as torch
    # 2.14 words them): the trial's reason must say `oom`, not a cryptic library error.
    assert _is_out_of_memory(RuntimeError(message)) is oom


def test_a_failed_trials_model_is_freed_when_the_trial_ends(tmp_path, monkeypatch):
    # Item 7. A failing trial's traceback held its frames and with them the model, optimiser and
    # data views, until a full garbage collection that may never come between trials: on a GPU the
    # next trial ran out of memory. With automatic collection off, nothing but the trial's own
    # clean-up can free it.
    models = []  # weak references to each trial's model, in order of creation
    alive_when_next_starts = []
    build = Pretraining.__init__

    def spy(self, *args, **kwargs):
        alive_when_next_starts.append([ref() is not None for ref in models])
        build(self, *args, **kwargs)
        models.append(weakref.ref(self.method))

    monkeypatch.setattr(Pretraining, "__init__", spy)
    # Trials that train, then fail in their final metric: they sample more fine-tuned blocks than
    # small_cnn has (the study's own setting, the whole network, serves the baseline).
    cfg = tiny_study(tmp_path / "runs", n_trials=2, **{
        "evaluation.final_metric": "finetune", "evaluation.finetune": {"epochs": 1},
        "search_space": {"evaluation.finetune.blocks": {"type": "int", "low": 98, "high": 99}}})
    gc.collect()
    gc.disable()
    try:
        study = hpsearch.run_study(cfg)
    finally:
        gc.enable()
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert "evaluation.finetune.blocks" in study.trials[0].user_attrs["reason"]
    # models[0] is the random-init baseline's, measured before the trials. As the first model of
    # the process it is held by torch's first lazy import (torch.fx.wrap keeps its callers' frames
    # in a cycle) until a collection: the end of the first trial.
    baseline, first, second = models
    # The rule: when a trial starts, the model of the trial before it is gone.
    assert alive_when_next_starts[2] == [False, False]
    # The rule: when the study returns, every trial's model is gone.
    assert first() is None and second() is None and baseline() is None
