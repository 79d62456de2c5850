"""One checkpoint root per study, whatever machine a worker runs on.

A retry loads the checkpoint of the trial it continues, which another worker wrote: every worker of
a study must see the same checkpoint directory. The first worker records its root with the study
(system attr: path, host, a fresh token) and writes the token into a marker file in that root;
every other worker looks for that token under its own root. The same folder seen at another path
(an NFS mount) passes; a root of its own (another work dir, a disk of its own) does not, and the
worker stops before it trains anything.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import optuna

from hpsearch.study.claims import claim
from hpsearch.study.studyfile import StudyFileError

ROOT_ATTR = "hpsearch:checkpoint_root"  # study system attr: {"path", "host", "token"}
MARKER = ".hpsearch-study-token"


def check_shared_root(study: optuna.Study, root: Path, *, wait_s: float = 10.0) -> None:
    """Raise StudyFileError (one line) unless `root` is the checkpoint root this study's workers share.
    Waits up to `wait_s` for the first worker, which may have claimed the root but not written its
    marker yet."""
    mine = {"path": str(root), "host": socket.gethostname(), "token": uuid.uuid4().hex}
    held = claim(study, ROOT_ATTR, mine, system=True)
    marker = root / MARKER
    if (held["host"], held["path"]) == (mine["host"], mine["path"]):
        # The very folder (this host, this path): write the study's token if it is missing, as after
        # the first worker's own start, or when the folder was emptied since.
        if _read(marker) != held["token"]:
            _write(marker, held["token"])
        return
    deadline = time.monotonic() + wait_s
    while _read(marker) != held["token"]:
        if time.monotonic() > deadline:
            raise StudyFileError(
                f"checkpoint root {root} is not the one this study's other workers use (host {held['host']} keeps it "
                f"at {held['path']}): set recovery.checkpoint_dir to a path every worker sees")
        time.sleep(0.2)


def _read(marker: Path) -> str | None:
    try:
        return marker.read_text().strip()
    except OSError:
        return None


def _write(marker: Path, token: str) -> None:
    """Atomically (a worker reading it never sees half a token)."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    partial = marker.with_name(f"{marker.name}.{os.getpid()}")
    partial.write_text(token + "\n")
    partial.replace(marker)
