"""Who runs a trial: its host and process, kept with the trial (user attr `worker`), so that a trial
whose process died on this host is known to be stale at once, without waiting out the heartbeat's
grace period (which stays the rule for trials of other hosts)."""

from __future__ import annotations

import os
import socket

OWNER_ATTR = "worker"  # user attr: {"host": ..., "pid": ..., "started": <process start time, clock ticks>}


def this_worker() -> dict:
    """This process, as a trial's owner."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def is_this_process(owner: dict | None) -> bool:
    return owner is not None and owner == this_worker()


def died_here(owner: dict | None) -> bool:
    """Whether `owner` was a process of this host that no longer runs. The start time tells a reused
    PID from the original process."""
    if owner is None or owner.get("host") != socket.gethostname():
        return False
    started = _start_time(owner["pid"])
    return started is None or started != owner.get("started")


def _start_time(pid: int) -> int | None:
    """The process's start time since boot (field 22 of /proc/PID/stat), or None when it is gone
    (or a zombie).
    Without /proc (not Linux) a live PID counts as the same process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return None if fields[0] in ("Z", "X") else int(fields[19])  # a zombie has died, unreaped
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
