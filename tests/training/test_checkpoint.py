"""Checkpoint files: atomic, checksummed, the newest two kept, a damaged newest one skipped."""

import argparse

import pytest
import torch

from hpsearch.training import checkpoint


def state(value: float) -> dict:
    return {"weights": torch.full((3,), value), "epoch": int(value), "history": [{"epoch": 1, "knn": 0.5}]}


def test_only_the_newest_two_are_kept(tmp_path):
    for epoch in range(1, 5):
        checkpoint.save(tmp_path, epoch, epoch * 10, state(epoch))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch00003-step0000030.pt", "epoch00004-step0000040.pt"]  # no .tmp left behind
    assert checkpoint.load_latest(tmp_path)["epoch"] == 4


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "empty"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    checkpoint.save(tmp_path, 1, 10, state(1))
    newest = checkpoint.save(tmp_path, 2, 20, state(2))
    data = newest.read_bytes()
    if damage == "truncate":  # a worker killed mid-write on a filesystem without atomic rename
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        newest.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        newest.write_bytes(b"")
    with pytest.warns(UserWarning, match="falling back to the previous checkpoint"):
        loaded = checkpoint.load_latest(tmp_path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["weights"], torch.full((3,), 1.0))


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert checkpoint.load_latest(tmp_path / "missing") is None


def test_a_checkpoint_cannot_run_code(tmp_path):
    # weights_only loading refuses arbitrary pickled objects (here: an argparse.Namespace).
    checkpoint.save(tmp_path, 1, 1, {"object": argparse.Namespace(x=1)})
    with pytest.raises(Exception, match="[Ww]eights only"):
        checkpoint.load_latest(tmp_path)
