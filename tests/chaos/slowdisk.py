"""The slow-disk fault: an ``LD_PRELOAD`` shim (``slowsync.c``) that delays ``fsync``,
``fdatasync`` and ``msync`` by a delay the harness sets in a control file, so it can slow one
node's disk syncs down and back up without restarting it.

Every chaos node runs with the shim preloaded (``RAFTMQ_SLOWSYNC_FILE`` = its own control file,
empty: no delay); the fault writes ``"50 500"`` (each call sleeps 50-500 ms) into the target's
file and empties it at the heal. The shim re-reads the file at most every 100 ms.

The shared object is built with gcc at test time, once per source version, under
``build/chaos/`` in the repository (or a temporary directory if that is not writable).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("slowsync.c")
REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = "RAFTMQ_SLOWSYNC_FILE"
ENV_LOG = "RAFTMQ_SLOWSYNC_LOG"
DEFAULT_RANGE_MS = (50, 500)


class ShimError(RuntimeError):
    pass


def _build_dirs() -> list[Path]:
    return [REPO_ROOT / "build" / "chaos", Path(tempfile.gettempdir()) / "raftmq-chaos-build"]


def build_shim() -> Path:
    """The shim's ``.so`` (built if missing or its source changed); raises ``ShimError`` if
    there is no compiler or it fails."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    name = f"slowsync-{digest}.so"
    for d in _build_dirs():
        if (d / name).exists():
            return d / name
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ShimError("no C compiler (gcc) to build the slow-disk shim")
    errors = []
    for d in _build_dirs():
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            errors.append(f"{d}: {e}")
            continue
        tmp = d / f".{name}.{os.getpid()}"
        try:
            proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(SOURCE),
                                   "-ldl", "-lpthread"], capture_output=True, text=True,
                                  timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{cc}: {e}")
            continue
        if proc.returncode != 0:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ShimError(f"{cc} failed on {SOURCE}:\n{proc.stderr}")
        os.replace(tmp, d / name)  # atomic: concurrent builders both succeed
        return d / name
    raise ShimError("cannot build the slow-disk shim: " + "; ".join(errors))


def shim_env(control: Path, log: Path | None = None) -> dict[str, str]:
    """Environment for a process that runs with the shim, controlled by ``control``."""
    env = {"LD_PRELOAD": str(build_shim()), ENV_FILE: str(control)}
    if log is not None:
        env[ENV_LOG] = str(log)
    return env


def set_delay(control: Path, min_ms: int, max_ms: int) -> None:
    """Every sync of the process(es) reading ``control`` sleeps ``min_ms``-``max_ms`` first
    (within 100 ms); 0, 0: no delay."""
    tmp = control.with_name(control.name + ".tmp")
    tmp.write_text(f"{min_ms} {max_ms}\n" if max_ms > 0 else "")
    os.replace(tmp, control)


def clear_delay(control: Path) -> None:
    set_delay(control, 0, 0)


def shim_stats(log: Path) -> tuple[int, int] | None:
    """(calls delayed, ms slept) as the shim last logged them (after each delayed call), or
    None."""
    try:
        lines = log.read_text().split("\n")
    except OSError:
        return None
    for line in reversed(lines):
        parts = line.split()
        if len(parts) == 3:
            return int(parts[1]), int(parts[2])
    return None
