"""`hpsearch run STUDY.yaml --workers N`: N local `hpsearch worker` processes on one study, shown
as one display.

The launcher trains nothing and imports neither torch nor mlflow (nor optuna): it starts the
workers, relays their lines prefixed `[wI]`, and forwards signals. What the workers share (the
study, its parent run, its checkpoints) they settle through the storage themselves.

- Threads: each worker gets max(1, cores // N) torch threads (OMP_NUM_THREADS / MKL_NUM_THREADS,
  and torch.set_num_threads in the worker), so N workers do not oversubscribe the cores.
- GPUs: worker i sees GPU (i // trials_per_gpu) % GPUs through CUDA_VISIBLE_DEVICES (of the list
  already set there, if any), counted with `nvidia-smi -L` so the launcher never initialises CUDA.
- Start: worker 1 first, the others once it has the study open with its random-init baseline
  (it announces itself then), so that N workers do not measure the baseline together.
- Signals: each worker runs in a process group of its own, so the terminal's Ctrl-C reaches the
  launcher only, which forwards it once to every worker (a second Ctrl-C, forwarded again, makes
  them exit at once, as it does one process). SIGTERM is forwarded the same way. The launcher
  waits for every worker, then prints one line with the command that continues.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import TextIO

ANNOUNCED = re.compile(r"^worker \S+ on study .*: (\d+)/(\d+) finished$")  # Session.run's first line
TRIAL_LINE = re.compile(r"^trial .*\|\s+(\d+)/(\d+) finished")  # Console.trial_finished
STOPPED = re.compile(r"^worker \S+: (done|study .* finalises it)")  # a worker leaving the study to others
# What every worker says on a stop; the launcher says it once for all of them.
PER_WORKER_STOP = re.compile(r"^(hpsearch: interrupted|\s*SIG\w+: stopping after|\s*SIG\w+ again: exiting)")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def threads_per_worker(n_workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // n_workers)


def visible_gpus() -> list[str]:
    """The CUDA devices a worker may be given: CUDA_VISIBLE_DEVICES's list when set, else every GPU
    `nvidia-smi -L` lists (none without it)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        listed = [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
        # CUDA stops at the first invalid entry; "-1" (or an empty list) hides every GPU.
        return [] if not listed or listed[0].startswith("-") else listed
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def gpu_of(index: int, gpus: list[str], trials_per_gpu: int) -> str:
    """The GPU of worker `index` (from 0): round robin, `trials_per_gpu` workers per GPU in turn."""
    return gpus[(index // trials_per_gpu) % len(gpus)]


@dataclass
class _Worker:
    index: int  # from 1, as shown: [w1]
    process: subprocess.Popen
    announced: bool = False
    complete_at_start: bool = False  # the study had its total when this worker opened it
    stopped: bool = False  # said it leaves the study to the others
    last_error: str = ""
    readers: list[threading.Thread] = field(default_factory=list)
    signalled: int = 0  # stop signals forwarded to it so far

    @property
    def busy(self) -> bool:
        return self.announced and not self.stopped and self.process.poll() is None


class Launcher:
    def __init__(self, commands: list[list[str]], envs: list[dict[str, str]], out: TextIO, err: TextIO):
        self.commands, self.envs, self.out, self.err = commands, envs, out, err
        self.lines: queue.Queue = queue.Queue()
        self.workers: list[_Worker] = []
        self.signum: int | None = None
        self.received = 0  # stop signals the launcher got
        self.said_stop = False
        self.first_failure: _Worker | None = None

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        try:
            self._start(0)
            while not self._all_done():
                self._relay_pending(wait=0.2)
                self._forward_pending()
                if self._may_start_the_others():
                    for i in range(1, len(self.commands)):
                        self._start(i)
            self._relay_pending(wait=0)  # what the last readers queued
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self._exit_status()

    def _all_done(self) -> bool:
        """Every worker started has exited and all its lines are read, and no other is to start."""
        for worker in self.workers:
            if worker.process.poll() not in (None, 0) and self.first_failure is None:
                self.first_failure = worker
        if any(w.process.poll() is None or any(r.is_alive() for r in w.readers) for w in self.workers):
            return False
        return not self._may_start_the_others()

    def _start(self, i: int) -> None:
        process = subprocess.Popen(self.commands[i], env=self.envs[i], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, bufsize=1, process_group=0)
        worker = _Worker(i + 1, process)
        for stream, to in ((process.stdout, self.out), (process.stderr, self.err)):
            reader = threading.Thread(target=self._read, args=(worker, stream, to), daemon=True)
            reader.start()
            worker.readers.append(reader)
        self.workers.append(worker)

    def _read(self, worker: _Worker, stream: TextIO, to: TextIO) -> None:
        for line in stream:
            self.lines.put((worker, line.rstrip("\n"), to))
        self.lines.put((worker, None, to))  # this stream ended

    def _relay_pending(self, wait: float) -> None:
        """Relay the lines queued, waiting up to `wait` s for the first."""
        try:
            worker, line, to = self.lines.get(timeout=wait) if wait else self.lines.get_nowait()
        except queue.Empty:
            return
        while True:
            if line is not None:
                self._relay(worker, line, to)
            try:
                worker, line, to = self.lines.get_nowait()
            except queue.Empty:
                return

    def _relay(self, worker: _Worker, line: str, to: TextIO) -> None:
        if to is self.err:
            if self.signum is not None and PER_WORKER_STOP.match(line):
                return
            if line.strip():
                worker.last_error = line.strip()
        announced = ANNOUNCED.match(line)
        if announced:
            worker.announced = True
            worker.complete_at_start = int(announced[1]) >= int(announced[2])
        if STOPPED.match(line):
            worker.stopped = True
        print(f"[w{worker.index}] {line}", file=to, flush=True)
        finished = TRIAL_LINE.match(line)
        if finished:
            running = sum(w.busy for w in self.workers)
            print(f"{finished[2]} trials: {finished[1]} finished, {running} running", file=self.out, flush=True)

    def _may_start_the_others(self) -> bool:
        """Worker 1 has the study open with its baseline (or exited cleanly) and the others are not
        started yet; not after a stop, nor when worker 1 found the study ended already."""
        if len(self.workers) != 1 or len(self.commands) == 1 or self.signum is not None:
            return False
        first = self.workers[0]
        if first.announced:
            return not first.complete_at_start
        return first.process.poll() == 0

    def _on_signal(self, signum, frame) -> None:
        """Only noted here; the main loop forwards it (a handler must not race the loop's own writes)."""
        self.signum = signum
        self.received += 1

    def _forward_pending(self) -> None:
        """Each stop signal once to every live worker: the first makes it checkpoint and stop, a
        second makes it exit at once."""
        if self.received and not self.said_stop:
            self.said_stop = True
            print(f"\nhpsearch: {signal.Signals(self.signum).name}: stopping {len(self.workers)} worker(s) after their "
                  "current step, each saving a checkpoint (again to exit at once)", file=self.err, flush=True)
        for worker in self.workers:
            while worker.signalled < self.received and worker.process.poll() is None:
                worker.signalled += 1
                try:
                    os.kill(worker.process.pid, self.signum)
                except ProcessLookupError:
                    break

    def _exit_status(self) -> int:
        if self.signum is not None:
            return 128 + self.signum
        worker = self.first_failure
        if worker is None:
            return 0
        code = worker.process.returncode
        code = 128 - code if code < 0 else code  # killed by a signal: as a shell reports it
        reason = f": {worker.last_error}" if worker.last_error else ""
        print(f"hpsearch: worker {worker.index} exited with status {code}{reason}", file=self.err, flush=True)
        return code


def launch(study_file: str, *, n_workers: int, trials_per_gpu: int, options: list[str], first_only: list[str],
           again: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run N `hpsearch worker` processes on `study_file` with `options` (--set, --storage, ...;
    `first_only` for worker 1 alone, such as --force); returns the exit status for `hpsearch run`."""
    threads = threads_per_worker(n_workers)
    gpus = visible_gpus()
    print(f"{n_workers} workers, {threads} torch thread(s) each (max(1, {os.cpu_count()} cores // {n_workers}))"
          + (f"; worker i on GPU (i // {trials_per_gpu}) % {len(gpus)} of {','.join(gpus)}" if gpus else ""),
          file=out, flush=True)
    base = [sys.executable, "-m", "hpsearch", "worker", study_file, *options]
    commands = [base + (first_only if i == 0 else []) for i in range(n_workers)]
    envs = []
    for i in range(n_workers):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpu_of(i, gpus, trials_per_gpu)
        envs.append(env)
    launcher = Launcher(commands, envs, out, err)
    status = launcher.run()
    if launcher.signum is not None:
        print(f"hpsearch: interrupted ({signal.Signals(launcher.signum).name}); each worker checkpointed its trial. "
              f"Continue with: {again}", file=err, flush=True)
    return status
