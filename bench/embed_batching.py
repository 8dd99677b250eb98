"""Embedding throughput with 32 closed-loop clients, batching on versus off (issue 5).

Starts two private daemons one after the other (default batching, then
`--embed-max-batch 1`), drives each with `mlxctl bench --connections 32` for the same
time, and writes the ratio into BENCHMARKS.md.

Usage: .venv/bin/python bench/embed_batching.py [--seconds S] [--bin target/release]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, machine, private_daemon, save_result, write_section  # noqa: E402


def measure(binaries: Path, extra: list[str], seconds: float) -> dict:
    with private_daemon(binaries, extra) as socket:
        out = subprocess.run(
            [str(binaries / "mlxctl"), "--socket", str(socket), "--no-fallback", "--json", "bench",
             "--model", "minilm", "--connections", "32", "--duration", str(seconds)],
            check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--bin", default=str(ROOT / "target/release"))
    args = parser.parse_args()
    binaries = Path(args.bin)
    # The same queue on both sides (the default is sized from the batch, 4 x 64 texts).
    batched = measure(binaries, ["--queue-capacity", "256"], args.seconds)
    unbatched = measure(binaries, ["--queue-capacity", "256", "--embed-max-batch", "1"], args.seconds)
    ratio = batched["texts_per_s"] / unbatched["texts_per_s"]
    row = lambda name, r: (f"| {name} | {r['texts_per_s']:.1f} | {r['latency_ms']['p50']:.0f} |"
                           f" {r['latency_ms']['p99']:.0f} | {r['busy']} | {sum(r['errors'].values())} |")
    lines = [
        "## Embeddings: 32 concurrent clients, batching on vs off (issue 5)",
        "",
        f"- Date: {date.today().isoformat()}; machine: {machine()}",
        f"- Command: `.venv/bin/python bench/embed_batching.py --seconds {args.seconds:g}` (part of `make bench`);"
        " each side: `mlxctl bench --model minilm --connections 32` closed loop, one short text per request.",
        "",
        "| daemon | texts/s | p50 ms | p99 ms | busy | errors |",
        "|---|---|---|---|---|---|",
        row("batching on (max 64 texts, 2 ms)", batched),
        row("batching off (`--embed-max-batch 1`)", unbatched),
        "",
        f"**Ratio: {ratio:.2f}x** (goal >= 4x: {'met' if ratio >= 4 else 'NOT met'}).",
    ]
    report = "\n".join(lines)
    print(report)
    write_section("embed-batching", report)
    save_result("embed_batching", {"texts_per_s": {"batched": batched["texts_per_s"],
                                                   "unbatched": unbatched["texts_per_s"]}, "ratio": ratio})


if __name__ == "__main__":
    main()
