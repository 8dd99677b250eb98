"""Generation throughput at 1, 4 and 8 concurrent streams through mlxd, and mlx_lm.server
at 8 concurrent requests on the same model, side by side (issue 5).

mlxd: one private daemon; `mlxctl bench --kind generate --connections N` closed loop for
each N (greedy, the same chat prompt, `--max-tokens` tokens per request).
mlx_lm.server: `python -m mlx_lm.server --model DIR` (its defaults, with the same BLAS
preloaded as mlxd's worker gets), driven by N threads each posting the same chat request
to /v1/chat/completions in a closed loop; tokens counted from `usage.completion_tokens`.

Usage: .venv/bin/python bench/generation.py [--seconds S] [--max-tokens T] [--bin DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, blas, machine, private_daemon, save_result, store_model, write_section  # noqa: E402

PROMPT = "Tell me a story."  # what `mlxctl bench --kind generate` sends


def mlxd(binaries: Path, socket_path: Path, streams: int, seconds: float, max_tokens: int) -> dict:
    out = subprocess.run(
        [str(binaries / "mlxctl"), "--socket", str(socket_path), "--no-fallback", "--json", "bench",
         "--model", "smollm2", "--kind", "generate", "--connections", str(streams),
         "--duration", str(seconds), "--max-tokens", str(max_tokens)],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlx_lm_server(model: Path, streams: int, seconds: float, max_tokens: int) -> dict:
    port = free_port()
    env = dict(os.environ)
    if blas():
        env["LD_PRELOAD"] = blas()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm.server", "--model", str(model), "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = json.dumps({"model": str(model), "messages": [{"role": "user", "content": PROMPT}],
                       "max_tokens": max_tokens, "temperature": 0.0, "stream": False}).encode()

    def post() -> int:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            return int(json.loads(response.read())["usage"]["completion_tokens"])

    try:
        for _ in range(600):  # wait for it to listen, then warm up
            try:
                post()
                break
            except OSError:
                time.sleep(0.1)
        tokens, requests, errors = [0], [0], [0]
        lock = threading.Lock()
        deadline = time.perf_counter() + seconds

        def client() -> None:
            while time.perf_counter() < deadline:
                try:
                    n = post()
                    with lock:
                        tokens[0] += n
                        requests[0] += 1
                except OSError:
                    with lock:
                        errors[0] += 1

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        return {"tokens_per_s": tokens[0] / elapsed, "requests": requests[0], "errors": errors[0]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--bin", default=str(ROOT / "target/release"))
    args = parser.parse_args()
    binaries = Path(args.bin)
    model = store_model("smollm2")
    results = {}
    with private_daemon(binaries) as socket_path:
        for streams in (1, 4, 8):
            results[streams] = mlxd(binaries, socket_path, streams, args.seconds, args.max_tokens)
            print(f"mlxd {streams} streams: {results[streams]['tokens_per_s']:.1f} tok/s", flush=True)
    servers = {}
    for streams in (1, 4, 8):
        servers[streams] = mlx_lm_server(model, streams, args.seconds, args.max_tokens)
        print(f"mlx_lm.server {streams} concurrent: {servers[streams]['tokens_per_s']:.1f} tok/s", flush=True)
    server = servers[8]

    single = results[1]["tokens_per_s"]
    scale = results[8]["tokens_per_s"] / single
    versus = results[8]["tokens_per_s"] / server["tokens_per_s"]
    lines = [
        "## Generation: aggregate tokens/s at 1, 4, 8 concurrent streams, mlxd and mlx_lm.server (issue 5)",
        "",
        f"- Date: {date.today().isoformat()}; machine: {machine()}",
        f"- Command: `.venv/bin/python bench/generation.py --seconds {args.seconds:g} --max-tokens {args.max_tokens}`"
        " (part of `make bench`). mlxd: `mlxctl bench --model smollm2 --kind generate --connections N`, closed loop,"
        f" greedy, {args.max_tokens} tokens per request. mlx_lm.server: `python -m mlx_lm.server --model"
        f" {model}` (its defaults; the same OpenBLAS preloaded), N threads posting the same chat request.",
        f"- Model: SmolLM2-135M-Instruct as set-up imports it here ({model.name}, see its mlxd-manifest.json).",
        "",
        "| server | concurrent | tokens/s | requests | p50 request ms | p99 request ms | busy | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for streams, r in results.items():
        lines.append(f"| mlxd | {streams} | {r['tokens_per_s']:.1f} | {r['ok']} | {r['latency_ms']['p50']:.0f} |"
                     f" {r['latency_ms']['p99']:.0f} | {r['busy']} | {sum(r['errors'].values())} |")
    for streams, s in servers.items():
        lines.append(f"| mlx_lm.server | {streams} | {s['tokens_per_s']:.1f} | {s['requests']} | | | | {s['errors']} |")
    lines += [
        "",
        f"**8 streams vs 1: {scale:.2f}x** (goal >= 4x: {'met' if scale >= 4 else 'NOT met'}).",
        f"**mlxd vs mlx_lm.server at 8: {versus:.2f}x** (goal >= 1: {'met' if versus >= 1 else 'NOT met'}).",
    ]
    report = "\n".join(lines)
    print(report)
    write_section("generation", report)
    save_result("generation", {
        "tokens_per_s": {"mlxd": {str(n): r["tokens_per_s"] for n, r in results.items()},
                         "mlx_lm.server": {str(n): s["tokens_per_s"] for n, s in servers.items()}},
        "scale_8_vs_1": scale, "versus_mlx_lm_server_at_8": versus})


if __name__ == "__main__":
    main()
