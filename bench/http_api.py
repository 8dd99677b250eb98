"""The HTTP API: what it costs against the binary protocol, and how its chat completions
keep up with mlx_lm.server's.

1. Embedding one short text, one request at a time, p50: POST /v1/embeddings over the
   daemon's Unix socket (a kept-alive connection, Python's http.client) versus the binary
   protocol (`mlxctl bench`, Rust). Rounds alternate. The HTTP client is the slower
   language, so the ratio is if anything pessimistic for HTTP.
2. Aggregate chat-completion throughput with 1, 4 and 8 concurrent streaming clients, the
   same openai-python code (threads, `stream=True`, `include_usage`) against mlxd's TCP
   listener (`--http`, with its token) and against `mlx_lm.server` serving the same model
   directory (smollm2 as set-up imported it, float32 on Linux) with the same OpenBLAS
   preload the daemon gives its workers. Greedy, max_tokens fixed; tokens counted from
   each stream's usage. Each server is warmed up first (model loaded, one completion).

Usage: .venv/bin/python bench/http_api.py [--rounds R] [--requests N] [--max-tokens T] [--bin target/release]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket as socketlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, machine, private_daemon, save_result, store_model, write_section  # noqa: E402
from memory import env_for_clients  # noqa: E402

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe the water cycle to a child.",
    "What makes a good cup of tea?",
    "Tell me about the history of the printing press.",
    "Why is the sky blue?",
    "Give advice to someone learning to cook.",
    "Describe a walk through a forest in autumn.",
]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost")
        self.path = path

    def connect(self) -> None:
        self.sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
        self.sock.connect(self.path)


def http_embed_p50(socket: Path, count: int) -> float:
    """p50 (ms) of one short embedding over HTTP on the socket, one connection kept alive."""
    connection = UnixHTTPConnection(str(socket))
    times = []
    for n in range(count + 20):
        body = json.dumps({"model": "minilm", "input": f"benchmark sentence number {n} part 0"})
        started = time.perf_counter()
        connection.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status == 200, data
        if n >= 20:  # the first 20 warm up
            times.append(elapsed)
    connection.close()
    return statistics.median(times)


def binary_embed_p50(binaries: Path, socket: Path, count: int) -> float:
    out = subprocess.run([str(binaries / "mlxctl"), "--socket", str(socket), "--no-fallback", "bench", "--json",
                          "-m", "minilm", "--connections", "1", "--requests", str(count)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["latency_ms"]["p50"]


def chat_throughput(base_url: str, api_key: str, model: str, clients: int, per_client: int,
                    max_tokens: int) -> dict:
    """Aggregate completion tokens/s of `clients` threads, each streaming `per_client` chats."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
    tokens, errors = [0] * clients, []
    first_token = []

    def run(i: int) -> None:
        for r in range(per_client):
            prompt = PROMPTS[(i + r * clients) % len(PROMPTS)]
            started = time.perf_counter()
            seen_first = False
            try:
                stream = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                    temperature=0, stream=True, stream_options={"include_usage": True})
                for chunk in stream:
                    if not seen_first and chunk.choices and chunk.choices[0].delta.content:
                        first_token.append(time.perf_counter() - started)
                        seen_first = True
                    if chunk.usage is not None:
                        tokens[i] += chunk.usage.completion_tokens
            except Exception as err:  # reported, not hidden
                errors.append(repr(err))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} requests failed against {base_url}: {errors[:3]}")
    return {"tokens": sum(tokens), "seconds": elapsed, "tokens_per_s": sum(tokens) / elapsed,
            "ttft_p50_s": statistics.median(first_token)}


def free_port() -> int:
    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, headers: dict, timeout: float = 300) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5):
                return
        except Exception:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def measure_server(base_url: str, api_key: str, model: str, levels: list[int], per_client: int,
                   max_tokens: int) -> dict:
    chat_throughput(base_url, api_key, model, 1, 1, max_tokens)  # warm-up: load, first compile
    return {str(n): chat_throughput(base_url, api_key, model, n, per_client, max_tokens) for n in levels}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--bin", default=str(ROOT / "target/release"))
    args = parser.parse_args()
    binaries = Path(args.bin)
    levels = [1, 4, 8]

    port = free_port()
    with private_daemon(binaries, ["--http", f"127.0.0.1:{port}"]) as socket:
        # 1. Embeddings: HTTP on the socket versus the binary protocol.
        binary_embed_p50(binaries, socket, 100)  # load + warm-up
        http_p50, binary_p50 = [], []
        for _ in range(args.rounds):
            binary_p50.append(binary_embed_p50(binaries, socket, args.requests))
            http_p50.append(http_embed_p50(socket, args.requests))
        # 2. Chat completions through mlxd's TCP listener.
        token = subprocess.run([str(binaries / "mlxd"), "token"], check=True, capture_output=True,
                               text=True).stdout.strip()
        base = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{base}/models", {"Authorization": f"Bearer {token}"})
        mlxd_chat = measure_server(base, token, "smollm2", levels, args.per_client, args.max_tokens)

    # The same, against mlx_lm.server on the same model directory.
    model_dir = store_model("smollm2")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mlx-lm-server-") as tmp:
        log = open(Path(tmp) / "server.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir),
                                   "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env_for_clients())
        try:
            base = f"http://127.0.0.1:{port}/v1"
            wait_http(f"{base}/models", {})
            mlx_lm_chat = measure_server(base, "none", str(model_dir), levels, args.per_client, args.max_tokens)
        finally:
            server.terminate()
            server.wait(timeout=30)

    from importlib.metadata import version
    embed_ratio = statistics.median(http_p50) / statistics.median(binary_p50)
    at8 = mlxd_chat["8"]["tokens_per_s"] / mlx_lm_chat["8"]["tokens_per_s"]
    rows = "\n".join(
        f"| {n} | {mlxd_chat[str(n)]['tokens_per_s']:.1f} | {mlx_lm_chat[str(n)]['tokens_per_s']:.1f} |"
        f" {mlxd_chat[str(n)]['tokens_per_s'] / mlx_lm_chat[str(n)]['tokens_per_s']:.2f} |"
        f" {mlxd_chat[str(n)]['ttft_p50_s']:.2f} / {mlx_lm_chat[str(n)]['ttft_p50_s']:.2f} |"
        for n in levels)
    report = "\n".join([
        "## HTTP API: cost against the binary protocol, and chat throughput against mlx_lm.server (issue 16)",
        "",
        f"- Date: {date.today().isoformat()}; machine: {machine()}",
        f"- Command: `.venv/bin/python bench/http_api.py --rounds {args.rounds} --requests {args.requests}"
        f" --max-tokens {args.max_tokens} --per-client {args.per_client}` (part of `make bench`);"
        f" release build; openai-python {version('openai')}, mlx-lm {version('mlx-lm')}.",
        "",
        "| embedding one short text, 1 connection, 1 in flight | p50 |",
        "|---|---|",
        f"| binary protocol (`mlxctl bench`, Rust) | {statistics.median(binary_p50):.2f} ms"
        f" (rounds: {', '.join(f'{v:.2f}' for v in binary_p50)}) |",
        f"| HTTP `/v1/embeddings` on the same socket (Python http.client, kept alive) |"
        f" {statistics.median(http_p50):.2f} ms (rounds: {', '.join(f'{v:.2f}' for v in http_p50)}) |",
        f"| **p50 ratio HTTP / binary** (goal <= 1.15: {'met' if embed_ratio <= 1.15 else 'NOT met'}) |"
        f" **{embed_ratio:.3f}** |",
        "",
        f"Chat completions, smollm2 ({model_dir.name}, as set-up imported it), greedy, max_tokens"
        f" {args.max_tokens}, {args.per_client} streamed requests per client, the same openai-python code"
        " against both servers over loopback TCP:",
        "",
        "| concurrent clients | mlxd tokens/s | mlx_lm.server tokens/s | ratio | time to first token p50, s (mlxd / mlx_lm) |",
        "|---|---|---|---|---|",
        rows,
        "",
        f"**At 8 clients: mlxd / mlx_lm.server = {at8:.2f}** (goal >= 1.0: {'met' if at8 >= 1.0 else 'NOT met'}).",
    ])
    print(report)
    write_section("http", report)
    save_result("http", {
        "embed_p50_ms": {"http": statistics.median(http_p50), "binary": statistics.median(binary_p50)},
        "embed_ratio": embed_ratio,
        "chat_tokens_per_s": {"mlxd": {n: r["tokens_per_s"] for n, r in mlxd_chat.items()},
                              "mlx_lm.server": {n: r["tokens_per_s"] for n, r in mlx_lm_chat.items()}},
        "chat_ratio_at_8": at8,
    })


if __name__ == "__main__":
    main()
