"""``python -m tests.fuzz [protocol|machine|node|all] [options]``: the three fuzzing layers.

``make fuzz`` runs all three at full length; ``make test`` runs a short version of
each (tests/fuzz/test_fuzz_short.py and tests/cluster/test_machine_fuzz.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.fuzz import node_fuzz, protocol_fuzz


def machine(argv: list[str]) -> int:
    examples = argv[0] if argv else "20000"
    print(f"machine fuzz: {examples} hypothesis command logs, and the two-tenant logs "
          f"(examples / 40, ~70 s)", flush=True)
    start = time.monotonic()
    code = subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=0",
         "tests/cluster/test_machine_fuzz.py", "tests/cluster/test_tenant_properties.py"],
        env={**os.environ, "FUZZ_EXAMPLES": examples})
    print(f"machine: {examples} logs in {time.monotonic() - start:.0f} s: "
          f"{'no failure' if code == 0 else 'FAILED'}")
    return code


def main(argv: list[str]) -> int:
    layer, rest = (argv[0], argv[1:]) if argv else ("all", [])
    if layer == "protocol":
        return protocol_fuzz.main(rest)
    if layer == "node":
        return node_fuzz.main(rest)
    if layer == "machine":
        return machine(rest)
    if layer == "all":
        results = [protocol_fuzz.main([]), machine([]), node_fuzz.main([])]
        return 1 if any(results) else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
