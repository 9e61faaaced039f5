"""tests/deploy reads YAML (PyYAML) and runs the real `docker-compose config`: both come with
the deployment linters, which deploy/lint.sh installs into .venv. Install them here if a test
run comes before `make lint-deploy`."""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _ensure_lint_tools() -> None:
    try:
        importlib.import_module("yaml")
        if (REPO / ".venv" / "bin" / "docker-compose").exists():
            return
    except ImportError:
        pass
    subprocess.run([str(REPO / "deploy" / "lint.sh"), "--install"], check=True, timeout=600)
    importlib.invalidate_caches()


_ensure_lint_tools()
