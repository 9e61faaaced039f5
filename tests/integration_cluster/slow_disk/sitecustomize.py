"""A slow disk for the node processes of a test (imported at start-up when this directory
is on PYTHONPATH): an fdatasync of a file that grew by more than ``SLOW_DISK_FROM_MIB`` MiB
since its last sync takes ``SLOW_DISK_DELAY_S`` seconds longer, as on a shared disk busy
with other work. (pysyncobj's journal grows in large steps, so this slows the syncs after a
multi-MB entry, and not every one of them.)"""

from __future__ import annotations

import os
import time
from typing import Any

_real = os.fdatasync
_grown_from = float(os.environ.get("SLOW_DISK_FROM_MIB", "8")) * (1 << 20)
_delay_s = float(os.environ.get("SLOW_DISK_DELAY_S", "0.8"))
_sizes: dict[tuple[int, int], int] = {}


def _slow_fdatasync(fd: Any) -> None:  # os.fdatasync's: an fd or an object with fileno()
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    before = _sizes.get(key, st.st_size)
    _sizes[key] = st.st_size
    _real(fd)
    if st.st_size - before > _grown_from:
        time.sleep(_delay_s)


os.fdatasync = _slow_fdatasync
