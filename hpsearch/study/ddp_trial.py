"""A trial trained by several processes together (`training.devices` > 1).

Rank 0 is the worker running the Optuna trial: it alone talks to Optuna and MLflow, evaluates,
decides and checkpoints (hpsearch.study.trial). It starts one follower process per other rank
(`python -m hpsearch.study.ddp_trial`), which trains its share of every batch and, after each
epoch, waits for rank 0's word: carry on, or stop (pruned, diverged, interrupted, finished or
failed). A follower never outlives its trial: it stops on that word, when the process group breaks
(rank 0 failed or left it) or, on Linux, with rank 0 itself (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from hpsearch.config.schema import StudyConfig
from hpsearch.data import load_splits
from hpsearch.training import checkpoint
from hpsearch.training.distributed import (COLLECTIVE_TIMEOUT, Ranks, SharedStop, StopTogether, check_devices,
                                           device_of, join, leave)
from hpsearch.training.pretrain import Diverged, Pretraining

# A follower starts through -c, not -m: running this module as __main__ would import it twice (the
# package imports it too), which runpy warns about.
FOLLOWER = "from hpsearch.study.ddp_trial import main; main()"
HOST = "127.0.0.1"  # one machine: the followers run next to rank 0
STOP_GRACE_S = 60  # for a follower to exit once told; then it is killed


class Solo:
    """`training.devices: 1`: the trial's one process, nothing to share or agree on."""

    ranks = None

    def stop(self, local):
        return local

    @contextmanager
    def verdict(self, go_on: bool):
        yield

    def resumed_from(self, session: Pretraining, loaded: bool) -> None:
        pass

    def close(self, session: Pretraining | None = None) -> list | None:
        return None

    def explained(self, err: BaseException) -> BaseException:
        return err


@dataclass
class Team:
    """Rank 0's side of a trial trained by `ranks.size` processes."""

    ranks: Ranks
    store: dist.TCPStore
    followers: list[subprocess.Popen]
    logs: list  # each follower's stderr, for the line that says why it died
    threads: int  # rank 0's torch threads before the trial
    closed: bool = field(default=False)

    def stop(self, local) -> SharedStop:
        """The trial's stop request (rank 0's StopRequest), shared: every rank stops at the same step."""
        return SharedStop(self.ranks, local)

    @contextmanager
    def verdict(self, go_on: bool):
        """Rank 0's work after an epoch (evaluate, record, decide); the followers wait for its word:
        carry on (`go_on`, when the block ends normally), or stop (it raised: pruned, interrupted,
        failed; or the last epoch)."""
        try:
            yield
        except BaseException:
            self._tell(False)
            raise
        self.ranks.agree(go_on)

    def resumed_from(self, session: Pretraining, loaded: bool) -> None:
        """Tell the followers the checkpoint rank 0 continues from (they load the same file), if any."""
        self.ranks.share((session.epoch, session.scheduler.last_epoch) if loaded else None)

    def close(self, session: Pretraining | None = None) -> list | None:
        """Leave the group and wait for the followers to exit (killing any that does not); returns
        each rank's last (epoch, step), rank 0's from `session`, None for a follower that did not say."""
        if self.closed:
            return None
        self.closed = True
        leave()  # a follower still waiting in a collective fails at once and exits
        for follower in self.followers:
            try:
                follower.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                follower.kill()
                follower.wait()
        torch.set_num_threads(self.threads)
        said = [_said(self.store, f"stopped/{rank}") for rank in range(1, self.ranks.size)]
        for log in self.logs:
            log.close()
        mine = [session.epoch, session.scheduler.last_epoch] if session is not None else None
        return [mine, *said]

    def explained(self, err: BaseException) -> BaseException:
        """A collective that failed because a follower died says so, with the follower's last words."""
        if not isinstance(err, RuntimeError):
            return err
        for rank, (follower, log) in enumerate(zip(self.followers, self.logs), start=1):
            try:
                code = follower.wait(timeout=5)  # it is dying: the broken group told rank 0 first
            except subprocess.TimeoutExpired:
                continue
            if code != 0:
                return RuntimeError(f"DDP rank {rank} (pid {follower.pid}) exited with {_exit_status(code)}"
                                    f"{': ' + last if (last := _last_line(log)) else ''}")
        return err

    def _tell(self, go_on: bool) -> None:
        try:
            self.ranks.agree(go_on)
        except RuntimeError:  # a follower already gone: closing the team deals with it
            pass


def open_team(cfg: StudyConfig, device: torch.device, seed: int, checkpoint_dir: Path) -> Solo | Team:
    """The processes that train this trial: rank 0 alone, or with `training.devices - 1` followers
    started here, joined in one process group and sent the trial's config, seed and checkpoint
    directory (the same path for every rank: they run on this machine)."""
    size = cfg.training.devices
    if size == 1:
        return Solo()
    check_devices(device, size)
    store = dist.TCPStore(HOST, 0, size, is_master=True, wait_for_workers=False, timeout=COLLECTIVE_TIMEOUT)
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(1, size)]
    followers = [subprocess.Popen([sys.executable, "-c", FOLLOWER, str(rank), str(size), str(store.port),
                                   str(os.getpid()), str(device_of(device, rank))],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
                 for rank, log in zip(range(1, size), logs)]
    try:
        _wait_for(followers, logs, store)
        ranks = join(0, size, HOST, store.port, device_of(device, 0), store=store)
    except BaseException:
        for follower in followers:
            follower.kill()
            follower.wait()
        raise
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // size))  # the ranks share this machine's cores
    ranks.share({"cfg": cfg, "seed": seed, "threads": torch.get_num_threads(), "checkpoint_dir": str(checkpoint_dir)})
    return Team(ranks, store, followers, logs, threads)


def _wait_for(followers: list[subprocess.Popen], logs: list, store: dist.TCPStore) -> None:
    """Until every follower has reached the store; one line naming the first that died before."""
    keys = [f"joined/{rank}" for rank in range(1, len(followers) + 1)]
    deadline = time.monotonic() + COLLECTIVE_TIMEOUT.total_seconds()
    while not store.check(keys):
        for rank, (follower, log) in enumerate(zip(followers, logs), start=1):
            if follower.poll() is not None:
                raise RuntimeError(f"DDP rank {rank} exited with {_exit_status(follower.returncode)} before joining"
                                   f"{': ' + last if (last := _last_line(log)) else ''}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"DDP followers did not start within {COLLECTIVE_TIMEOUT}")
        time.sleep(0.05)


def _said(store: dist.TCPStore, key: str) -> list[int] | None:
    if not store.check([key]):
        return None
    return [int(v) for v in store.get(key).decode().split()]


def _last_line(log) -> str:
    log.seek(0)
    lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _exit_status(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"


def follow(rank: int, size: int, port: int, parent: int, device: torch.device) -> None:
    """A follower: train this rank's share of the trial rank 0 describes, until rank 0 says stop."""
    _die_with(parent)
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C reaches the whole process group: rank 0 decides
        signal.signal(signum, signal.SIG_IGN)
    store = dist.TCPStore(HOST, port, size, is_master=False, timeout=COLLECTIVE_TIMEOUT)
    store.set(f"joined/{rank}", "1")
    ranks = join(rank, size, HOST, port, device, store=store)
    setup = ranks.share()
    torch.set_num_threads(setup["threads"])
    cfg: StudyConfig = setup["cfg"]
    session = Pretraining(cfg, load_splits(cfg.data).to(device), device, setup["seed"], ranks)
    _resume(session, ranks.share(), setup)
    stop = SharedStop(ranks)
    while True:
        try:
            session.train_epoch(stop)
        except (StopTogether, Diverged):  # every rank saw the same stop, or the same global loss
            break
        if not ranks.agree(False):
            break
    # Where this rank stopped, for rank 0 to keep with the trial (only a follower that stopped on
    # rank 0's word says it: one that failed says nothing).
    store.set(f"stopped/{rank}", f"{session.epoch} {session.scheduler.last_epoch}")
    leave()


def _resume(session: Pretraining, point: tuple[int, int] | None, setup: dict) -> None:
    """Load the checkpoint rank 0 continues from: the newest intact one, which must be rank 0's."""
    if point is None:
        return
    directory = Path(setup["checkpoint_dir"])
    state = checkpoint.load_latest(directory, map_location="cpu")
    if state is None:
        raise RuntimeError(f"{directory}: no checkpoint readable here, where rank 0 continues from epoch "
                           f"{point[0]}, step {point[1]} (the checkpoint directory must be one all ranks see)")
    session.load_state_dict(state["training"])
    if (session.epoch, session.scheduler.last_epoch) != tuple(point):
        raise RuntimeError(f"{directory}: the newest checkpoint here is epoch {session.epoch}, step "
                           f"{session.scheduler.last_epoch}; rank 0 continues from epoch {point[0]}, step {point[1]}")


def _die_with(parent: int) -> None:
    """Linux: this process is killed when rank 0 ends, however it ends (even SIGKILL)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # rank 0 ended before the line above took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> None:
    rank, size, port, parent, device = (argv or sys.argv[1:])
    follow(int(rank), int(size), int(port), int(parent), torch.device(device))


if __name__ == "__main__":
    main()
