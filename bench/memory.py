"""Memory shared: N client processes that each embed and generate, four ways.

(a) in-process: N Python processes, each loading MiniLM (with the same MLX code the worker
    runs) and SmolLM2 (mlx-lm) itself, then embedding and generating in a loop;
(b) mlx_lm.server: one server process for SmolLM2 and N Python processes that generate
    through it over HTTP and embed in-process (mlx-lm serves no embeddings);
(c) mlxd: the daemon, its two workers, and N `mlxctl tenant` processes (a lease on each
    model, embed + generate in a loop over the socket);
(d) mlxd stdio: N `mlxctl tenant` processes with no daemon, each falling back to its own
    `mlxd stdio` and workers (the isolation the stdio mode buys, at N = 1 and 4).

When every client has finished a first round, the proportional set size (PSS, from
/proc/PID/smaps_rollup: shared pages divided among the processes sharing them) of every
process involved is summed, sampled for a few seconds while the loops run; the median sum
is reported. Every side gets the same OpenBLAS preload and the same allocator settings the
daemon gives its workers, and (a)/(b) use MLX's buffer cache limit the workers use, so the
comparison is of sharing, not of tuning.

Usage: .venv/bin/python bench/memory.py [--clients 1,4,8,16] [--bin target/release]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (ROOT, blas, descendants, machine, minilm_dir, private_daemon, pss_kib,  # noqa: E402
                    save_result, store_model, write_section)
from generation import free_port  # noqa: E402

# What the daemon gives its workers (daemon/src/supervise/mod.rs, WORKER_MALLOC_ENV).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456", "MALLOC_ARENA_MAX": "1"}

CLIENT = r"""
import json, os, select, sys, urllib.request
import mlxd_runtime
embed_dir, llm_dir, server = sys.argv[1], sys.argv[2], sys.argv[3]
embedder = mlxd_runtime.load("embedding", embed_dir)  # also sets MLX's cache limit as workers do
if server == "-":
    from mlx_lm import generate, load
    model, tokenizer = load(llm_dir)
def one_round(i):
    embedder.embed([f"client {os.getpid()} round {i}: a sentence to embed"])
    prompt = f"Round {i}. Once upon a time"
    if server == "-":
        generate(model, tokenizer, prompt, max_tokens=16)
    else:
        body = json.dumps({"model": llm_dir, "prompt": prompt, "max_tokens": 16, "temperature": 0.0}).encode()
        request = urllib.request.Request(server, data=body, headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=600).read()
i = 0
while True:
    one_round(i)
    i += 1
    if i == 1:
        print("ready", flush=True)
    if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read(1):
        break
"""


def env_for_clients() -> dict:
    """What a worker's environment adds: the allocator settings and the OpenBLAS preload."""
    env = {**os.environ, **MALLOC_ENV}
    if blas():
        env["LD_PRELOAD"] = blas()
    return env


def wait_ready(clients: list[subprocess.Popen], timeout: float = 600) -> None:
    pending = {c.stdout.fileno(): c for c in clients}
    deadline = time.time() + timeout
    while pending:
        if time.time() > deadline:
            raise SystemExit(f"{len(pending)} clients not ready after {timeout} s")
        ready, _, _ = select.select(list(pending), [], [], 1.0)
        for fd in ready:
            line = pending[fd].stdout.readline()
            if "ready" in line:
                del pending[fd]
            elif not line:
                raise SystemExit(f"a client exited before its first round (exit {pending[fd].wait()})")


def sample(pids_now, seconds: float = 3.0) -> tuple[float, float]:
    """Median and max of the summed PSS (MiB) over a few seconds."""
    sums = []
    end = time.time() + seconds
    while time.time() < end:
        sums.append(sum(pss_kib(pid) for pid in pids_now()) / 1024)
        time.sleep(0.5)
    return statistics.median(sums), max(sums)


def stop(clients: list[subprocess.Popen]) -> None:
    for c in clients:
        try:
            c.stdin.close()
        except OSError:
            pass
    for c in clients:
        try:
            c.wait(timeout=120)
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()


def python_clients(n: int, server: str) -> list[subprocess.Popen]:
    llm = store_model("smollm2")
    return [subprocess.Popen([sys.executable, "-c", CLIENT, str(minilm_dir()), str(llm), server],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env=env_for_clients()) for _ in range(n)]


def in_process(n: int) -> tuple[float, float]:
    clients = python_clients(n, "-")
    try:
        wait_ready(clients)
        return sample(lambda: [c.pid for c in clients])
    finally:
        stop(clients)


def with_mlx_lm_server(n: int) -> tuple[float, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", str(store_model("smollm2")),
                               "--port", str(port)], env=env_for_clients(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/completions"
    try:
        wait_for_server(url)
        clients = python_clients(n, url)
        try:
            wait_ready(clients)
            return sample(lambda: [server.pid] + [c.pid for c in clients])
        finally:
            stop(clients)
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for_server(url: str) -> None:
    body = json.dumps({"model": str(store_model("smollm2")), "prompt": "Hi", "max_tokens": 1}).encode()
    for _ in range(1200):
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=600).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("mlx_lm.server did not answer within 2 minutes")


def tenants(binaries: Path, n: int, socket: Path | None) -> list[subprocess.Popen]:
    where = ["--socket", str(socket), "--no-fallback"] if socket else ["--socket", "/nonexistent/mlxd.sock"]
    env = {**os.environ, "MLXD_BIN": str(binaries / "mlxd")}
    return [subprocess.Popen([str(binaries / "mlxctl"), *where, "tenant"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            for _ in range(n)]


def daemon_pid(socket: Path) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmdline and str(socket).encode() in cmdline:
                return int(entry.name)
    raise SystemExit("the daemon's pid was not found")


def through_mlxd(binaries: Path, n: int) -> tuple[float, float]:
    with private_daemon(binaries) as socket:
        daemon = daemon_pid(socket)
        clients = tenants(binaries, n, socket)
        try:
            wait_ready(clients)
            return sample(lambda: [daemon, *descendants(daemon)] + [c.pid for c in clients])
        finally:
            stop(clients)


def through_stdio(binaries: Path, n: int) -> tuple[float, float]:
    clients = tenants(binaries, n, None)
    try:
        wait_ready(clients)
        return sample(lambda: [pid for c in clients for pid in (c.pid, *descendants(c.pid))])
    finally:
        stop(clients)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--stdio-clients", default="1,4")
    parser.add_argument("--bin", default=str(ROOT / "target/release"))
    args = parser.parse_args()
    binaries = Path(args.bin)
    counts = [int(n) for n in args.clients.split(",")]
    setups = {
        "in-process": in_process,
        "mlx_lm.server": with_mlx_lm_server,
        "mlxd": lambda n: through_mlxd(binaries, n),
    }
    results: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in [*setups, "mlxd stdio"]}
    for n in counts:
        for name, measure in setups.items():
            results[name][n] = measure(n)
            print(f"N={n:2d} {name:14s} PSS {results[name][n][0]:8.0f} MiB (max {results[name][n][1]:.0f})",
                  flush=True)
    for n in [int(n) for n in args.stdio_clients.split(",")]:
        results["mlxd stdio"][n] = through_stdio(binaries, n)
        print(f"N={n:2d} mlxd stdio     PSS {results['mlxd stdio'][n][0]:8.0f} MiB", flush=True)

    ratio_at = {n: results["mlxd"][n][0] / results["in-process"][n][0] for n in counts}
    goal_n = 8 if 8 in counts else counts[-1]
    met = ratio_at[goal_n] <= 0.2
    lines = [
        "## Memory shared: N clients that each embed and generate (issue 8)",
        "",
        f"- Date: {date.today().isoformat()}; machine: {machine()}",
        f"- Command: `.venv/bin/python bench/memory.py --clients {args.clients}` (part of `make bench`).",
        "- Each client embeds one sentence with MiniLM and generates 16 tokens with SmolLM2 (as set-up imports"
        " it here), in a loop. Total PSS (MiB) of every process involved, median of samples over 3 s once all"
        " clients have finished a round. (a) N Python processes loading both models themselves (MiniLM with the"
        " worker's own MLX code, SmolLM2 with mlx-lm); (b) one `mlx_lm.server` for SmolLM2 + N Python clients"
        " that generate through it and embed in-process (mlx-lm serves no embeddings); (c) `mlxd serve` + its"
        " workers + N `mlxctl tenant` processes; (d) N `mlxctl tenant` with no daemon, each with its own"
        " `mlxd stdio` and workers. Same OpenBLAS preload, allocator settings and MLX cache limit everywhere.",
        "",
        "| N | (a) in-process | (b) mlx_lm.server | (c) mlxd | (c) / (a) | (d) mlxd stdio |",
        "|---|---|---|---|---|---|",
    ]
    for n in counts:
        stdio = results["mlxd stdio"].get(n)
        lines.append(
            f"| {n} | {results['in-process'][n][0]:.0f} | {results['mlx_lm.server'][n][0]:.0f} |"
            f" {results['mlxd'][n][0]:.0f} | **{ratio_at[n]:.3f}** | {f'{stdio[0]:.0f}' if stdio else '-'} |")
    lines += [
        "",
        f"**mlxd at N = {goal_n}: {ratio_at[goal_n]:.3f} x in-process** (goal <= 0.2: {'met' if met else 'NOT met'}).",
        f"Per extra client: in-process {per_client(results['in-process'], counts):.0f} MiB,"
        f" mlx_lm.server {per_client(results['mlx_lm.server'], counts):.0f} MiB,"
        f" mlxd {per_client(results['mlxd'], counts):.1f} MiB (slope from N = {counts[0]} to {counts[-1]}).",
    ]
    report = "\n".join(lines)
    print(report)
    write_section("memory", report)
    save_result("memory", {"clients": counts, "pss_mib": {k: {str(n): v[0] for n, v in r.items()}
                                                         for k, r in results.items()},
                           "ratio_mlxd_in_process": {str(n): r for n, r in ratio_at.items()}})


def per_client(series: dict[int, tuple[float, float]], counts: list[int]) -> float:
    first, last = counts[0], counts[-1]
    return (series[last][0] - series[first][0]) / max(1, last - first)


if __name__ == "__main__":
    main()
