"""Overhead paid: what the trip through mlxd costs a client.

1. Protocol round trip: `Ping` p50/p99 on one connection, one request at a time.
2. Raw frame throughput for small messages: pings with 32 in flight per connection
   (pipelined on one connection, and on 16).
3. Embedding one short text: p50 latency through mlxd (`mlxctl bench`, one connection,
   one request at a time) versus the same MLX call in-process (the worker's own embedder,
   with the same OpenBLAS preload and allocator settings); rounds alternate.
4. Stdio fallback: time from starting `mlxctl embed` to its output with (a) a daemon that
   has the model loaded, (b) a daemon that must start the worker first, and (c) no daemon,
   so the client starts a private `mlxd stdio` and its worker.

Decode speed through mlxd versus in-process is measured by bench/decode.py.

Usage: .venv/bin/python bench/overhead.py [--seconds S] [--rounds R] [--bin target/release]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, machine, minilm_dir, private_daemon, save_result, write_section  # noqa: E402
from memory import env_for_clients  # noqa: E402

IN_PROCESS_EMBED = r"""
import json, sys, time
import mlxd_runtime
embedder = mlxd_runtime.load("embedding", sys.argv[1])
count = int(sys.argv[2])
for n in range(20):  # warm-up, as the daemon's worker is warm
    embedder.embed([f"benchmark sentence number {n} part 0"])
times = []
for n in range(count):
    started = time.perf_counter()
    embedder.embed([f"benchmark sentence number {n} part 0"], True)
    times.append((time.perf_counter() - started) * 1000)
print(json.dumps(times))
"""


def bench(binaries: Path, socket: Path, *args: str) -> dict:
    out = subprocess.run([str(binaries / "mlxctl"), "--socket", str(socket), "--no-fallback", "bench", "--json",
                          *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def in_process_embed_p50(count: int) -> float:
    out = subprocess.run([sys.executable, "-c", IN_PROCESS_EMBED, str(minilm_dir()), str(count)],
                         check=True, capture_output=True, text=True, env=env_for_clients()).stdout
    return statistics.median(json.loads(out))


def time_first_embedding(binaries: Path, socket: Path | None) -> float:
    """Seconds from starting `mlxctl embed` to its exit with the vector printed."""
    where = ["--socket", str(socket), "--no-fallback"] if socket else ["--socket", "/nonexistent/mlxd.sock"]
    env = {**os.environ, "MLXD_BIN": str(binaries / "mlxd"), "MLXD_LOG": "warn"}
    started = time.perf_counter()
    out = subprocess.run([str(binaries / "mlxctl"), *where, "embed", "-m", "minilm", "hello world"],
                         check=True, capture_output=True, text=True, env=env).stdout
    elapsed = time.perf_counter() - started
    assert "384 dims" in out, out
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--bin", default=str(ROOT / "target/release"))
    args = parser.parse_args()
    binaries = Path(args.bin)
    seconds = str(args.seconds)

    with private_daemon(binaries) as socket:
        ping = bench(binaries, socket, "--kind", "ping", "--connections", "1", "--duration", seconds)
        frames_1 = bench(binaries, socket, "--kind", "ping", "--connections", "1", "--pipeline", "32",
                         "--duration", seconds)
        frames_16 = bench(binaries, socket, "--kind", "ping", "--connections", "16", "--pipeline", "32",
                          "--duration", seconds)
        bench(binaries, socket, "-m", "minilm", "--connections", "1", "--requests", "100")  # load + warm-up
        daemon_p50, local_p50 = [], []
        for _ in range(args.rounds):
            r = bench(binaries, socket, "-m", "minilm", "--connections", "1", "--requests", str(args.requests))
            daemon_p50.append(r["latency_ms"]["p50"])
            local_p50.append(in_process_embed_p50(args.requests))
        warm = statistics.median([time_first_embedding(binaries, socket) for _ in range(args.rounds)])
    cold = []
    for _ in range(args.rounds):
        with private_daemon(binaries) as socket:
            cold.append(time_first_embedding(binaries, socket))
    stdio = [time_first_embedding(binaries, None) for _ in range(args.rounds)]

    embed_ratio = statistics.median(daemon_p50) / statistics.median(local_p50)
    memory = None
    memory_path = ROOT / "bench/results/memory.json"
    if memory_path.exists():
        memory = json.loads(memory_path.read_text())["pss_mib"]
    lines = [
        "## Overhead: the trip through mlxd (issue 8)",
        "",
        f"- Date: {date.today().isoformat()}; machine: {machine()}",
        f"- Command: `.venv/bin/python bench/overhead.py --seconds {args.seconds:g} --rounds {args.rounds}`"
        " (part of `make bench`); release build, one private daemon.",
        "",
        "| measure | result |",
        "|---|---|",
        f"| Ping round trip, 1 connection, 1 in flight | p50 {ping['latency_ms']['p50'] * 1000:.0f} µs,"
        f" p99 {ping['latency_ms']['p99'] * 1000:.0f} µs ({ping['requests_per_s']:,.0f} /s) |",
        f"| Small frames (Ping/Pong), 1 connection, 32 pipelined | {frames_1['requests_per_s']:,.0f} round trips/s"
        f" (p50 {frames_1['latency_ms']['p50']:.2f} ms) |",
        f"| Small frames, 16 connections x 32 pipelined | {frames_16['requests_per_s']:,.0f} round trips/s"
        f" (p50 {frames_16['latency_ms']['p50']:.2f} ms) |",
        f"| Embed one short text, in-process (worker's embedder) | p50 {statistics.median(local_p50):.2f} ms"
        f" (rounds: {', '.join(f'{v:.2f}' for v in local_p50)}) |",
        f"| Embed one short text, through mlxd | p50 {statistics.median(daemon_p50):.2f} ms"
        f" (rounds: {', '.join(f'{v:.2f}' for v in daemon_p50)}) |",
        f"| **embed p50 ratio mlxd / in-process** (goal <= 1.10: {'met' if embed_ratio <= 1.10 else 'NOT met'})"
        f" | **{embed_ratio:.3f}** |",
        "",
        "Both ends of the ping run on the same 2 cores; the client is `mlxctl bench` (Rust, tokio), so the"
        " frame rates are what one client process can drive, not a ceiling of the daemon alone.",
        "",
        "### Stdio fallback: what isolation costs",
        "",
        "| path | start of `mlxctl embed` to its answer (median) |",
        "|---|---|",
        f"| daemon running, model loaded | {warm * 1000:.0f} ms |",
        f"| daemon running, model not loaded (worker starts) | {statistics.median(cold) * 1000:.0f} ms |",
        f"| no daemon: private `mlxd stdio` + its worker | {statistics.median(stdio) * 1000:.0f} ms |",
    ]
    if memory and "mlxd stdio" in memory:
        stdio_mem, daemon_mem = memory["mlxd stdio"], memory["mlxd"]
        lines += [
            "",
            "Memory (PSS, MiB, from the memory benchmark: clients that embed and generate):"
            + "".join(f" N = {n}: daemon path {daemon_mem[n]:.0f}, stdio {stdio_mem[n]:.0f};"
                      for n in stdio_mem if n in daemon_mem).rstrip(";")
            + ". Every stdio tenant loads its own models, so its memory grows with N like in-process use.",
        ]
    report = "\n".join(lines)
    print(report)
    write_section("overhead", report)
    save_result("overhead", {
        "ping_us": {"p50": ping["latency_ms"]["p50"] * 1000, "p99": ping["latency_ms"]["p99"] * 1000},
        "frames_per_s": {"1": frames_1["requests_per_s"], "16": frames_16["requests_per_s"]},
        "embed_p50_ms": {"mlxd": statistics.median(daemon_p50), "in_process": statistics.median(local_p50)},
        "embed_ratio": embed_ratio,
        "first_embedding_s": {"warm": warm, "cold": statistics.median(cold), "stdio": statistics.median(stdio)},
    })


if __name__ == "__main__":
    main()
