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
from common import ROOT, machine, private_daemon, pss_kib, save_result, write_section  # noqa: E402

MODELS = ("minilm", "smollm2")
# The first request a client makes of an idle (unloaded) model.
FIRST_REQUEST = {
    "minilm": ["embed", "-m", "minilm", "hello world"],
    "smollm2": ["generate", "-m", "smollm2", "--max-tokens", "1", "--temperature", "0", "Hi"],
}


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


def spare_of(socket: Path) -> int | None:
    """The pid of the spare worker of the daemon serving `socket`, if it has one."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"--spare" not in argv:
                continue
            ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            parent = (Path("/proc") / ppid / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(socket).encode() in parent:
            return int(entry.name)
    return None


def wait_for_spare(socket: Path, settle: float) -> int:
    """Waits until the daemon has a spare, then `settle` s more for its imports."""
    for _ in range(600):
        pid = spare_of(socket)
        if pid:
            time.sleep(settle)
            return pid
        time.sleep(0.05)
    raise SystemExit(f"no spare worker appeared for {socket}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=6.0, help="seconds a new spare gets for its imports")
    parser.add_argument("--bin", default=str(ROOT / "target/release"))
    args = parser.parse_args()
    binaries = Path(args.bin)
    rows = []
    firsts = []
    spare_pss = []
    dropped_all = True
    # Two daemons on the same models: one without a spare worker (cold loads, and reloads
    # that start a worker), one with (reloads that adopt the spare). Rounds alternate.
    with private_daemon(binaries, ["--spare-workers", "0"]) as plain, \
            private_daemon(binaries, ["--spare-workers", "1"]) as spared:
        ctl = lambda socket: [str(binaries / "mlxctl"), "--socket", str(socket), "--no-fallback"]  # noqa: E731
        for model in MODELS:
            cold, warm, adopted, first_plain, first_spared = [], [], [], [], []
            for _ in range(args.rounds):
                dropped_all &= drop_page_cache()
                cold.append(timed(ctl(plain) + ["load", model]))
                timed(ctl(plain) + ["unload", model])
                warm.append(timed(ctl(plain) + ["load", model]))
                timed(ctl(plain) + ["unload", model])
                spare = wait_for_spare(spared, args.settle)
                spare_pss.append(pss_kib(spare) / 1024)
                adopted.append(timed(ctl(spared) + ["load", model]))
                timed(ctl(spared) + ["unload", model])
                # The first request after an idle unload, end to end (client start included).
                first_plain.append(timed(ctl(plain) + FIRST_REQUEST[model]))
                timed(ctl(plain) + ["unload", model])
                wait_for_spare(spared, args.settle)
                first_spared.append(timed(ctl(spared) + FIRST_REQUEST[model]))
                timed(ctl(spared) + ["unload", model])
            rows.append((model, statistics.median(cold), statistics.median(warm), statistics.median(adopted)))
            firsts.append((model, statistics.median(first_plain), statistics.median(first_spared)))

    lines = [
        "## Model load: cold vs reload after an idle unload (issues 4 and 20)",
        "",
        f"- Date: {date.today().isoformat()}; machine: {machine()}",
        f"- Command: `make bench` (runs `.venv/bin/python bench/load.py --rounds {args.rounds}`)",
        "- Time from `mlxctl load` to the model being Ready (client clock), medians of"
        f" {args.rounds} rounds, alternating: a cold load and a reload on a daemon without a spare"
        " worker, then a reload on a daemon whose spare worker (started, imports done) is adopted;"
        " each load is followed by an unload."
        + (" The page cache was dropped before each cold load." if dropped_all else
           " The page cache could NOT be dropped here (no permission), so \"cold\" means a first load"
           " with whatever the cache held."),
        "",
        "| model | cold load | reload, new worker | reload, spare adopted | ratio adopted / cold (goal <= 0.3) |",
        "|---|---|---|---|---|",
    ]
    for model, cold, warm, adopted in rows:
        ratio = adopted / cold
        lines.append(f"| {model} | {cold:.2f} s | {warm:.2f} s ({warm / cold:.2f}) | {adopted:.2f} s |"
                     f" {ratio:.2f} ({'met' if ratio <= 0.3 else 'NOT met'}) |")
    lines += [
        "",
        "The first request after an idle unload (`mlxctl embed` of one text / `mlxctl generate` of one token,"
        " from starting the client to its answer, medians):",
        "",
        "| model | new worker | spare adopted |",
        "|---|---|---|",
    ]
    for model, plain_s, spared_s in firsts:
        lines.append(f"| {model} | {plain_s * 1000:.0f} ms | {spared_s * 1000:.0f} ms |")
    lines += [
        "",
        f"The spare worker (interpreter, MLX, mlx-lm, tokenizers and transformers imported, no model) holds"
        f" {statistics.median(spare_pss):.0f} MiB (PSS, median of {len(spare_pss)} samples) while it waits."
        " Without it a reload is mostly a new worker process: starting the interpreter and importing MLX and"
        " mlx-lm, which the page cache does not speed up; with it, what is left is the weights and building"
        " the model.",
    ]
    report = "\n".join(lines)
    print(report)
    write_section("load", report)
    save_result("load", {
        "seconds": {model: {"cold": cold, "reload": adopted, "reload_new_worker": warm}
                    for model, cold, warm, adopted in rows},
        "spare_pss_mib": statistics.median(spare_pss),
        "first_request_after_idle_s": {model: {"new_worker": p, "spare": q} for model, p, q in firsts},
    })


if __name__ == "__main__":
    main()
