"""Pretraining's GPU settings, decided on the CPU with the CUDA queries stood in for (issue 14,
items 5, 6, 9), plus the same paths on a real GPU when there is one."""

import pytest
import torch

from hpsearch.config.schema import StudyConfig
from hpsearch.data import load_splits
from hpsearch.training import checkpoint
from hpsearch.training.pretrain import Pretraining, use_bf16_autocast
from tests.helpers import tiny_study

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return load_splits(StudyConfig.model_validate(tiny_study(tmp_path_factory.mktemp("data"))).data)


def config(tmp_path, **training) -> StudyConfig:
    return StudyConfig.model_validate(tiny_study(tmp_path, training={"epochs": 2, "batch_size": 128, **training}))


@pytest.mark.parametrize(("gpu", "native", "emulated"), [
    ("A100 / H100 (sm80+)", True, True),
    ("T4 / V100 (emulated bf16)", False, True),
    ("P100 (no bf16)", False, False),
])
@pytest.mark.parametrize("precision", ["auto", "bf16", "fp32"])
def test_auto_precision_takes_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, gpu, native, emulated, precision):
    def is_bf16_supported(including_emulation: bool = True) -> bool:  # torch's answer on that GPU
        return native or (including_emulation and emulated)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    expected = {"auto": native, "bf16": True, "fp32": False}[precision]
    # The rule: auto means bf16 on native-bf16 GPUs and float32 elsewhere (emulated bf16 sends
    # convolutions to slow kernels); bf16 and fp32 are what they say.
    assert use_bf16_autocast(CUDA, precision) is expected, gpu
    # The rule: the CPU always trains in float32, whatever the setting.
    assert use_bf16_autocast(torch.device("cpu"), precision) is False


def test_cuda_generators_restore_for_the_gpus_that_exist(tmp_path, splits, monkeypatch):
    # A checkpoint written with 2 GPUs visible, continued where 1 is (another node, a changed
    # CUDA_VISIBLE_DEVICES): set_rng_state_all raised IndexError and the retry failed.
    session = Pretraining(config(tmp_path), splits, torch.device("cpu"), seed=0)
    state = session.state_dict()
    state["cuda_rng"] = [torch.full((16,), index, dtype=torch.uint8) for index in range(2)]
    restored = {}

    def set_rng_state(new_state, device="cuda"):  # torch.cuda.set_rng_state on a 1-GPU machine
        index = device if isinstance(device, int) else (torch.device(device).index or 0)
        (object(),)[index]  # torch indexes its default generators so: IndexError past the visible GPUs
        restored[index] = new_state.clone()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)  # what set_rng_state_all calls
    Pretraining(config(tmp_path), splits, torch.device("cpu"), seed=1).load_state_dict(state)
    # The rule: each GPU that exists gets the state saved for its index; the others are skipped.
    assert list(restored) == [0] and torch.equal(restored[0], state["cuda_rng"][0])


def test_compile_applies_on_cuda_only(tmp_path, splits):
    # Inductor's CPU kernels change results (loss 4.888 vs 4.889): on the CPU, training.compile is
    # ignored with a warning, and a seed still gives the same results.
    with pytest.warns(UserWarning, match="CUDA only"):
        compiled = Pretraining(config(tmp_path, compile=True), splits, torch.device("cpu"), seed=0)
    plain = Pretraining(config(tmp_path), splits, torch.device("cpu"), seed=0)
    assert compiled.method.backbone._compiled_call_impl is None  # nn.Module.compile() sets it
    assert compiled.train_epoch().ssl_loss == plain.train_epoch().ssl_loss


# --------------------------------------------------------------------------------------- GPU only

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@gpu
def test_a_cuda_session_resumes_bit_for_bit_from_a_checkpoint(tmp_path, splits):
    on_gpu = splits.to(CUDA)
    trained = Pretraining(config(tmp_path, epochs=3), on_gpu, CUDA, seed=0)
    trained.train_epoch()
    checkpoint.save(tmp_path / "ckpt", 1, trained.scheduler.last_epoch, {"training": trained.state_dict()})
    resumed = Pretraining(config(tmp_path, epochs=3), on_gpu, CUDA, seed=1)
    resumed.load_state_dict(checkpoint.load_latest(tmp_path / "ckpt", map_location="cpu")["training"])
    assert resumed.train_epoch().ssl_loss == trained.train_epoch().ssl_loss


@gpu
def test_precision_and_compile_on_this_gpu(tmp_path, splits):
    session = Pretraining(config(tmp_path, compile=True), splits.to(CUDA), CUDA, seed=0)
    assert session.autocast is torch.cuda.is_bf16_supported(including_emulation=False)
    assert session.method.backbone._compiled_call_impl is not None
    assert session.train_epoch().ssl_loss > 0
