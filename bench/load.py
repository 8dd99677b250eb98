"""Cold load versus reload after an idle unload, for both bundled models (issue 4).

Starts a private `mlxd serve`, then for each model: drops the page cache when allowed
(root on Linux; otherwise says so), times `mlxctl load` (cold), unloads, and times the
load again (page cache warm). Writes the results into BENCHMARKS.md.

Usage: .venv/bin/python bench/load.py [--rounds R] [--bin target/release]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, machine, private_daemon, save_result, write_section  # noqa: E402

MODELS = ("minilm", "smollm2")


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bin", default=str(ROOT / "target/release"))
    args = parser.parse_args()
    binaries = Path(args.bin)
    rows = []
    dropped_all = True
    with private_daemon(binaries) as socket:
        ctl = [str(binaries / "mlxctl"), "--socket", str(socket), "--no-fallback"]
        for model in MODELS:
            cold, warm = [], []
            for _ in range(args.rounds):
                dropped_all &= drop_page_cache()
                cold.append(timed(ctl + ["load", model]))
                timed(ctl + ["unload", model])
                warm.append(timed(ctl + ["load", model]))
                timed(ctl + ["unload", model])
            rows.append((model, statistics.median(cold), statistics.median(warm)))

    lines = [
        "## Model load: cold vs reload after an idle unload (issue 4)",
        "",
        f"- Date: {date.today().isoformat()}; machine: {machine()}",
        f"- Command: `make bench` (runs `.venv/bin/python bench/load.py --rounds {args.rounds}`)",
        "- Time from `mlxctl load` to the model being Ready (client clock), medians of"
        f" {args.rounds} rounds; each round unloads the model in between."
        + (" The page cache was dropped before each cold load." if dropped_all else
           " The page cache could NOT be dropped here (no permission), so \"cold\" means a first load"
           " with whatever the cache held."),
        "",
        "| model | cold load | reload (page cache warm) | ratio (goal <= 0.3) |",
        "|---|---|---|---|",
    ]
    for model, cold, warm in rows:
        ratio = warm / cold
        lines.append(f"| {model} | {cold:.2f} s | {warm:.2f} s | {ratio:.2f} ({'met' if ratio <= 0.3 else 'NOT met'}) |")
    lines += [
        "",
        "A load is mostly a new worker process: starting the interpreter, importing MLX and"
        " mlx-lm, and building the model, which the page cache does not speed up; only the"
        " weight reads get faster when warm.",
    ]
    report = "\n".join(lines)
    print(report)
    write_section("load", report)
    save_result("load", {"seconds": {model: {"cold": cold, "reload": warm} for model, cold, warm in rows}})


if __name__ == "__main__":
    main()
