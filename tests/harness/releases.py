"""The previous release's code, for upgrade tests: a tree with its ``node``, ``cluster`` and
``protocol`` packages, run with this checkout's virtualenv (its dependencies are a subset).

Built from the pinned git revision when this clone has it, else from the archive checked in
beside the tests (made by ``git archive`` of that revision), so a shallow clone works too.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

from harness.raftmq import REPO_ROOT

PREVIOUS_RELEASE = "0.1.0"
PREVIOUS_REVISION = "7acbfcb19ecb7bc5cab7114251eb9676501c7919"
ARCHIVE = REPO_ROOT / "tests" / "fixtures" / f"release-{PREVIOUS_RELEASE}.tar.gz"
PACKAGES = ("node", "cluster", "protocol")


def previous_release() -> Path:
    dest = REPO_ROOT / "build" / "releases" / f"{PREVIOUS_RELEASE}-{PREVIOUS_REVISION[:12]}"
    if (dest / "node" / "__main__.py").exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    archive = tmp / "release.tar"
    made = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "-o", str(archive),
                           PREVIOUS_REVISION, *PACKAGES], capture_output=True, timeout=60)
    source = archive if made.returncode == 0 else ARCHIVE
    with tarfile.open(source) as tar:
        tar.extractall(tmp, filter="data")
    archive.unlink(missing_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
