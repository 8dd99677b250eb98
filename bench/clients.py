"""The native clients (issue 17): one short embedding, one request at a time, p50, through
the Rust client (`mlxctl bench`), the Python client (clients/python/bench_embed.py), the
Node client (clients/node/bench/embed-p50.mjs), and the same request over HTTP on the same
socket with the openai-python SDK. One private daemon, the model warm; rounds alternate
the clients; every client sends the same texts ("benchmark sentence number N part 0").

Usage: .venv/bin/python bench/clients.py [--rounds R] [--n N] [--bin target/release]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, machine, private_daemon, save_result, write_section  # noqa: E402

OPENAI_EMBED = r"""
import json, statistics, sys, time
import httpx2, openai
client = openai.OpenAI(base_url="http://localhost/v1", api_key="unused", max_retries=0,
                       http_client=openai.DefaultHttpx2Client(transport=httpx2.HTTPTransport(uds=sys.argv[1])))
n = int(sys.argv[2])
for i in range(20):
    client.embeddings.create(model="minilm", input=[f"warm-up sentence {i}"])
times = []
for i in range(n):
    started = time.perf_counter_ns()
    client.embeddings.create(model="minilm", input=[f"benchmark sentence number {i} part 0"])
    times.append((time.perf_counter_ns() - started) / 1000)
print(json.dumps({"client": "openai", "p50_us": statistics.median(times), "n": n}))
"""


def last_json(command: list[str], cwd: Path | None = None) -> dict:
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=cwd).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--bin", default=str(ROOT / "target/release"))
    args = parser.parse_args()
    binaries = Path(args.bin)
    n = str(args.n)
    p50 = {"rust": [], "python": [], "node": [], "openai": []}
    with private_daemon(binaries) as socket:
        mlxctl = [str(binaries / "mlxctl"), "--socket", str(socket), "--no-fallback", "bench", "--json", "-m",
                  "minilm", "--connections", "1"]
        last_json(mlxctl + ["--requests", "100"])  # load + warm-up
        for _ in range(args.rounds):
            p50["rust"].append(last_json(mlxctl + ["--requests", n])["latency_ms"]["p50"] * 1000)
            p50["python"].append(last_json([sys.executable, str(ROOT / "clients/python/bench_embed.py"),
                                            "--socket", str(socket), "--n", n])["p50_us"])
            p50["node"].append(last_json(["node", "bench/embed-p50.mjs", "--socket", str(socket), "--n", n],
                                         cwd=ROOT / "clients/node")["p50_us"])
            p50["openai"].append(last_json([sys.executable, "-c", OPENAI_EMBED, str(socket), n])["p50_us"])
            time.sleep(0.5)

    from importlib.metadata import version
    median = {k: statistics.median(v) for k, v in p50.items()}
    ratio = {k: median[k] / median["rust"] for k in median}
    label = {
        "rust": "Rust client (`mlxctl bench`)",
        "python": "Python client (`clients/python`)",
        "node": "Node client (`clients/node`)",
        "openai": f"HTTP `/v1/embeddings` on the socket, openai-python {version('openai')}",
    }
    rows = "\n".join(
        f"| {label[k]} | {median[k] / 1000:.2f} ms (rounds: {', '.join(f'{v / 1000:.2f}' for v in p50[k])}) |"
        f" {ratio[k]:.3f} |" for k in ("rust", "python", "node", "openai"))
    goal = lambda k: "met" if ratio[k] <= 1.3 else "NOT met"  # noqa: E731
    report = "\n".join([
        "## Native clients: one short embedding through each (issue 17)",
        "",
        f"- Date: {date.today().isoformat()}; machine: {machine()}",
        f"- Command: `.venv/bin/python bench/clients.py --rounds {args.rounds} --n {args.n}` (part of `make bench`);"
        " release daemon, one connection, one request at a time, model warm, rounds alternating the clients.",
        "",
        "| client | p50 | / Rust |",
        "|---|---|---|",
        rows,
        "",
        f"Goal <= 1.3x Rust: Python {ratio['python']:.3f} ({goal('python')}), Node {ratio['node']:.3f}"
        f" ({goal('node')}). The HTTP row is the same request through the openai SDK, for comparison.",
    ])
    print(report)
    write_section("clients", report)
    save_result("clients", {"embed_p50_us": median, "ratio_to_rust": ratio})


if __name__ == "__main__":
    main()
