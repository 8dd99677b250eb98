"""Test-only fault hooks, inert unless MLXD_TEST_FAULT is set.

`MLXD_TEST_FAULT=load:crash` makes the worker's process die while loading, so tests can
drive the supervisor's crash handling with the real worker binary. Nothing here runs in
production: with the variable unset every hook is a no-op.
"""

from __future__ import annotations

import os
import sys


def maybe_fail(stage: str) -> None:
    spec = os.environ.get("MLXD_TEST_FAULT", "")
    if not spec:
        return
    for item in spec.split(","):
        where, _, what = item.partition(":")
        if where != stage:
            continue
        if what == "crash":
            print(f"mlxd test fault: crashing at {stage}", file=sys.stderr, flush=True)
            os._exit(17)
        if what == "raise":
            raise RuntimeError(f"test fault injected at {stage}")
