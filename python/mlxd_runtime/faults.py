"""Test-only fault hooks, inert unless MLXD_TEST_FAULT and MLXD_TEST_FAULT_ALLOWED=1 are set.

`MLXD_TEST_FAULT` is a comma-separated list of `STAGE:ACTION[:ARG]`, so tests can drive
the supervisor's crash handling and watchdog with the real worker binary:

- `load:crash` — the worker process dies (status 17) while loading;
- `embed:raise` — the job raises;
- `embed:hang` — the job never returns and reports no progress (the watchdog's case);
- `embed:slow:SECONDS` — the job takes that long but reports progress every 0.25 s;
- `embed:short` — the answer has one vector fewer than the texts it was asked for;
- `rerank:raise`, `rerank:hang`, `rerank:slow:SECONDS`, `rerank:short` — the same for a
  rerank job (`short`: one score fewer than the pairs);
- `detokenize:huge` — the answer is a 65 MiB text, over the worker link's frame limit;
- `ACTION-once:MARKER` (e.g. `embed:hang-once:/tmp/x`) — only the first worker to create
  the marker file is affected, so the restarted worker serves the replayed job.

Nothing here runs in production: only a debug build of the daemon passes MLXD_TEST_FAULT to
its workers, and it sets MLXD_TEST_FAULT_ALLOWED=1 beside it (daemon/src/supervise/
fault_hook.rs). Without both, every hook is a no-op — so a variable left in a service's
environment, or this module run under another launcher, cannot crash or hang a worker.
"""

from __future__ import annotations

import os
import sys
import time


def maybe_fail(stage: str) -> None:
    spec = os.environ.get("MLXD_TEST_FAULT", "")
    if not spec or os.environ.get("MLXD_TEST_FAULT_ALLOWED") != "1":
        return
    for item in spec.split(","):
        parts = item.split(":", 2)
        if len(parts) < 2 or parts[0] != stage:
            continue
        what, arg = parts[1], parts[2] if len(parts) > 2 else ""
        if what.endswith("-once"):
            try:
                os.close(os.open(arg, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            what, arg = what[: -len("-once")], ""
        if what == "crash":
            print(f"mlxd test fault: crashing at {stage}", file=sys.stderr, flush=True)
            os._exit(17)
        if what == "raise":
            raise RuntimeError(f"test fault injected at {stage}")
        if what == "hang":
            print(f"mlxd test fault: hanging at {stage}", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
        if what == "slow":
            from . import progress

            end = time.monotonic() + float(arg or 5)
            while time.monotonic() < end:
                time.sleep(0.25)
                progress()


def wants(stage: str, action: str) -> bool:
    """Whether the fault `STAGE:ACTION` is set (for faults that change an answer rather
    than fail the job)."""
    spec = os.environ.get("MLXD_TEST_FAULT", "")
    if not spec or os.environ.get("MLXD_TEST_FAULT_ALLOWED") != "1":
        return False
    return any(item.split(":", 2)[:2] == [stage, action] for item in spec.split(",") if item)
