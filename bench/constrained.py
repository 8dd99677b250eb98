"""Constrained decoding's cost inside continuous batching (issue 19).

Eight concurrent streaming chat completions on smollm2 (greedy, max_tokens fixed), over
HTTP on the daemon's socket: (A) none constrained, then (B) the same eight with a JSON
schema (`response_format`) on half of them. Each stream's decode rate is its completion
tokens after the first divided by the time from its first to its last token (prompt
processing excluded). Reported: the median rate of the unconstrained streams in A and in
B, and of the constrained streams in B. Rounds alternate A and B; the medians over rounds.

Goal: the unconstrained streams lose < 5 % when half the batch is constrained; the
constrained ones run within 20 % of an unconstrained stream.

Usage: .venv/bin/python bench/constrained.py [--rounds R] [--max-tokens T] [--bin target/release]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, machine, private_daemon, save_result, write_section  # noqa: E402
from http_api import PROMPTS, UnixHTTPConnection  # noqa: E402

# Long enough for max_tokens: a title and a free text field.
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 40}, "text": {"type": "string", "maxLength": 2000}},
    "required": ["title", "text"],
    "additionalProperties": False,
}


def stream(socket: Path, prompt: str, max_tokens: int, constrained: bool) -> tuple[int, float]:
    """(tokens after the first, seconds from the first token to the last) of one stream."""
    body = {"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "doc", "schema": SCHEMA}}
    connection = UnixHTTPConnection(str(socket))
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    times = []
    for line in response:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            times.append(time.perf_counter())
    connection.close()
    return max(len(times) - 1, 0), (times[-1] - times[0]) if len(times) > 1 else 0.0


def round_of(socket: Path, max_tokens: int, constrained: list[bool]) -> list[tuple[bool, float]]:
    """(constrained, tokens/s) of each of the concurrent streams."""
    results: list[tuple[bool, float] | None] = [None] * len(constrained)

    def run(i: int) -> None:
        tokens, seconds = stream(socket, PROMPTS[i], max_tokens, constrained[i])
        results[i] = (constrained[i], tokens / seconds if seconds > 0 else 0.0)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(constrained))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--bin", default=str(ROOT / "target/release"))
    args = parser.parse_args()
    plain_a, plain_b, constrained_b = [], [], []
    with private_daemon(Path(args.bin), ["--spare-workers", "0"]) as socket:
        round_of(socket, 8, [False, True] * 4)  # warm: the model, the tokenizer and the grammar cache
        for _ in range(args.rounds):
            a = round_of(socket, args.max_tokens, [False] * 8)
            b = round_of(socket, args.max_tokens, [False, True] * 4)
            plain_a.append(statistics.median(rate for _, rate in a))
            plain_b.append(statistics.median(rate for c, rate in b if not c))
            constrained_b.append(statistics.median(rate for c, rate in b if c))
    a, b, c = statistics.median(plain_a), statistics.median(plain_b), statistics.median(constrained_b)
    unconstrained_loss, constrained_loss = 1 - b / a, 1 - c / a
    save_result("constrained", {"unconstrained_alone": a, "unconstrained_beside": b, "constrained": c,
                                "unconstrained_loss": unconstrained_loss, "constrained_loss": constrained_loss})
    met = lambda ok: "met" if ok else "not met"  # noqa: E731
    body = "\n".join([
        "## Constrained decoding inside the batch (issue 19)",
        "",
        f"- Date: {time.strftime('%Y-%m-%d')}; machine: {machine()}",
        f"- Command: `.venv/bin/python bench/constrained.py --rounds {args.rounds} --max-tokens {args.max_tokens}` (part of `make bench`)",
        "- 8 concurrent streaming chat completions on smollm2 (greedy), HTTP on the socket; per-stream decode "
        "rate = tokens after the first / time from first to last token; medians over streams, then over rounds. "
        "B puts a JSON schema (`response_format`, a title and a text field) on every other stream.",
        "",
        "| streams | decode tok/s per stream | change vs all unconstrained | goal |",
        "|---|---|---|---|",
        f"| A: 8 unconstrained | {a:.2f} | - | - |",
        f"| B: the 4 unconstrained | {b:.2f} | {-unconstrained_loss:+.1%} | lose < 5 % ({met(unconstrained_loss < 0.05)}) |",
        f"| B: the 4 constrained | {c:.2f} | {-constrained_loss:+.1%} | lose < 20 % ({met(constrained_loss < 0.20)}) |",
    ])
    write_section("constrained", body)
    print(body)


if __name__ == "__main__":
    main()
