"""Debian's Chromium for the dashboard tests, driven by Playwright (pip) with the system
browser: nothing is downloaded from the browser vendors."""

from __future__ import annotations

import os
import shutil
import subprocess


def ensure_chromium(timeout: float = 900) -> str:
    """The path of Debian's chromium, installed with apt when missing (we run as root)."""
    found = shutil.which("chromium")
    if found:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, timeout=timeout).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, timeout=timeout, check=True)
        subprocess.run(install, env=env, timeout=timeout, check=True)
    found = shutil.which("chromium")
    if not found:
        raise RuntimeError("apt installed chromium but it is not on PATH")
    return found
