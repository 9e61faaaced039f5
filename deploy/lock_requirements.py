"""Write deploy/requirements.lock: raftmq's runtime dependencies (pyproject.toml) and theirs, at
the exact versions installed in the environment running this script.

    .venv/bin/python deploy/lock_requirements.py          # rewrite the lock
    .venv/bin/python deploy/lock_requirements.py --check  # exit 1 if it would change
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

LOCK = Path(__file__).with_name("requirements.lock")
HEADER = """\
# Runtime dependencies of raftmq (pyproject.toml [project.dependencies]) and theirs,
# pinned to the versions the project is tested with (.venv). The Docker image installs
# exactly these. Regenerate after changing dependencies:
#   .venv/bin/python deploy/lock_requirements.py
"""


def _name(requirement: str) -> str:
    m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert m, requirement
    return re.sub(r"[-_.]+", "-", m.group(0)).lower()


def _applies(requirement: str) -> bool:
    """Skip extras-only requirements; evaluate simple environment markers."""
    _, sep, marker = requirement.partition(";")
    if not sep:
        return True
    if "extra" in marker:
        return False
    from packaging.markers import Marker  # packaging comes with pip's vendored copy too

    return Marker(marker.strip()).evaluate()


def closure(root: str = "raftmq") -> dict[str, str]:
    pins: dict[str, str] = {}
    todo = [r for r in distribution(root).requires or [] if _applies(r)]
    while todo:
        name = _name(todo.pop())
        if name in pins:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            sys.exit(f"{name} is not installed: run make install first")
        pins[name] = dist.version
        todo += [r for r in dist.requires or [] if _applies(r)]
    return pins


def render() -> str:
    return HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(closure().items()))


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if LOCK.read_text() != text:
            print(f"{LOCK} is out of date with the installed packages; regenerate it:\n"
                  f"  .venv/bin/python deploy/lock_requirements.py")
            return 1
        return 0
    LOCK.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
