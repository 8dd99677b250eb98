#!/usr/bin/env python3
"""Micro-benchmark: sequential one-short-text embeddings through the Python client.

    python bench_embed.py --socket S --model minilm --n 300

Leases the model, warms up, then times N embeddings of one short text each, one after
another, and prints one JSON line: {"client": "python", "p50_us": ..., "p90_us": ..., "n": N}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import List

import mlxd  # beside this script in a checkout, or installed


def percentile(sorted_values: List[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="daemon socket [default: as mlxd.Client decides]")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--n", type=int, default=300, help="timed embeddings")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    if args.n < 1:
        parser.error("--n must be at least 1")

    with mlxd.Client(args.socket, fallback=False, client_name="bench_embed") as client:
        with client.lease(args.model) as model:
            for i in range(args.warmup):
                model.embed([f"warm-up sentence {i}"])
            timings: List[float] = []
            for i in range(args.n):
                text = [f"benchmark sentence number {i} part 0"]  # as `mlxctl bench` sends
                started = time.perf_counter_ns()
                model.embed(text)
                timings.append((time.perf_counter_ns() - started) / 1000)
    timings.sort()
    result = {
        "client": "python",
        "p50_us": round(percentile(timings, 0.50), 1),
        "p90_us": round(percentile(timings, 0.90), 1),
        "n": args.n,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
