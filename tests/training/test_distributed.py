"""Two CPU processes (gloo) pretraining one trial together: the same model on both ranks after every
epoch, the same run for the same seed, and rank 0's state alone enough to continue both ranks."""

import copy
import multiprocessing
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from hpsearch.config.schema import StudyConfig
from hpsearch.data import load_splits
from hpsearch.training.distributed import Ranks, check_devices, join, leave
from hpsearch.training.pretrain import Pretraining
from tests.helpers import free_port, tiny_study

HOST = "127.0.0.1"
SEED = 7


def _config(workdir: Path) -> StudyConfig:
    return StudyConfig.model_validate(tiny_study(workdir, **{"training.devices": 2, "training.epochs": 2}))


def _rank(rank: int, port: int, workdir: str, resume_from: str | None, out: str) -> None:
    """One rank: train to the end (from rank 0's saved state when given), saving its state after each epoch."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    store = dist.TCPStore(HOST, port, 2, is_master=True) if rank == 0 else None
    ranks = join(rank, 2, HOST, port, torch.device("cpu"), store=store)
    torch.set_num_threads(1)
    cfg = _config(Path(workdir))
    session = Pretraining(cfg, load_splits(cfg.data), torch.device("cpu"), SEED, ranks)
    if resume_from is not None:
        session.load_state_dict(torch.load(resume_from, weights_only=True))
    states = {}
    while session.epoch < cfg.training.epochs:
        stats = session.train_epoch()
        state = copy.deepcopy(session.state_dict())  # not the live tensors, which the next epoch changes
        states[session.epoch] = {"state": state, "loss": stats.ssl_loss, "online": stats.online_accuracy}
    torch.save(states, Path(out) / f"rank{rank}.pt")
    leave()


def train_two_ranks(tmp_path: Path, name: str, resume_from: Path | None = None) -> list[dict]:
    """Each rank's {epoch: state, loss, online accuracy} of one two-process run."""
    out = tmp_path / name
    out.mkdir()
    port = free_port()
    spawn = multiprocessing.get_context("spawn")
    ranks = [spawn.Process(target=_rank, args=(r, port, str(tmp_path), resume_from and str(resume_from), str(out)))
             for r in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=600)
        assert process.exitcode == 0, f"{name}: a rank exited with {process.exitcode}"
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


# The global Python and numpy generators: saved in checkpoints for code that may draw from them,
# but training never does (each process starts them as it likes).
UNUSED = ("python_rng", "numpy_rng")


def training_state(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in UNUSED}


def same_epoch(a: dict, b: dict) -> bool:
    """Two ranks' or runs' records of one epoch: state, loss and online accuracy."""
    return same({**a, "state": training_state(a["state"])}, {**b, "state": training_state(b["state"])})


def same(a, b) -> bool:
    """Bit for bit, through nested state dicts."""
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return tmp, train_two_ranks(tmp, "first")


def test_both_ranks_hold_the_same_training_state_after_every_epoch(run):
    _, (rank0, rank1) = run
    assert sorted(rank0) == sorted(rank1) == [1, 2]
    for epoch in (1, 2):
        # Weights, buffers (batch-norm statistics), optimiser, schedule, shuffle generator, online probe:
        # all the same, so rank 0's checkpoint is the whole trial's.
        # The loss is the global one on every rank, and the online probe saw the whole global batch.
        assert same_epoch(rank0[epoch], rank1[epoch]), epoch
        assert rank0[epoch]["online"] is not None
    # And it trained: the weights moved between the epochs.
    first, second = rank0[1]["state"]["method"], rank0[2]["state"]["method"]
    assert any(not torch.equal(first[k], second[k]) for k in first if first[k].is_floating_point())


def test_a_two_rank_run_is_the_same_for_the_same_seed_and_continues_bit_exactly(run):
    tmp, (rank0, _) = run
    again = train_two_ranks(tmp, "again")
    for epoch in (1, 2):
        assert same_epoch(again[0][epoch], rank0[epoch]), epoch
    # Rank 0's state after epoch 1, loaded by both ranks (as every rank loads rank 0's checkpoint),
    # trains epoch 2 exactly as the uninterrupted run did, on both ranks.
    saved = tmp / "epoch1.pt"
    torch.save(rank0[1]["state"], saved)
    resumed = train_two_ranks(tmp, "resumed", resume_from=saved)
    for rank in range(2):
        assert sorted(resumed[rank]) == [2]
        assert same_epoch(resumed[rank][2], rank0[2]), rank


def test_the_ranks_share_each_global_batch_without_overlap():
    order = torch.randperm(70)
    parts = [Ranks(rank, 2, control=None).part(order, batch=16) for rank in range(2)]
    # 4 full batches of 16: each rank takes 8 images of each, the two halves of every batch.
    assert [len(p) for p in parts] == [32, 32]
    for step in range(4):
        batch = set(order[step * 16:(step + 1) * 16].tolist())
        halves = [set(p[step * 8:(step + 1) * 8].tolist()) for p in parts]
        assert halves[0] | halves[1] == batch and not halves[0] & halves[1]
    # Each rank augments with its own draws.
    assert len({Ranks(rank, 2, None).augment_seed(SEED, step) for rank in range(2) for step in range(3)}) == 6


def test_more_devices_than_gpus_is_a_one_line_error():
    visible = torch.cuda.device_count()
    with pytest.raises(ValueError) as caught:
        check_devices(torch.device("cuda"), visible + 1)
    assert str(caught.value) == (f"training.devices: {visible + 1} asks for {visible + 1} GPUs from cuda:0, "
                                 f"but {visible} {'is' if visible == 1 else 'are'} visible")
    check_devices(torch.device("cpu"), 4)  # CPU processes: as many as asked


def test_a_batch_too_small_to_split_is_a_one_line_error(tmp_path):
    cfg = StudyConfig.model_validate(tiny_study(tmp_path, **{"training.batch_size": 3}))
    with pytest.raises(ValueError, match=r"^training.batch_size 3 split between training.devices 2 leaves 1 image"):
        Pretraining(cfg, load_splits(cfg.data), torch.device("cpu"), SEED, Ranks(0, 2, control=None))
