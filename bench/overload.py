"""Overload: an open-loop rate at 50x the measured embedding capacity for 30 s (issue 5).

1. Measures capacity: `mlxctl bench --model minilm --connections 64` closed loop (one
   short text per request), requests/s.
2. Drives `mlxctl bench --rate 50xC --connections 64` open loop for 30 s, while separate connections ask for `Status` and `Ping`, and send a
   batch-priority `Embed` (refused with `Busy` while the queue is full), every 20 ms (raw
   protocol clients written here, so their timing includes nothing but the socket and the
   daemon). The daemon's and worker's memory (PSS, /proc/PID/smaps_rollup) is sampled
   every 0.5 s in both runs. Growth is the level over the overload's last third (median of
   the samples) against the level at capacity (median): what the daemon and worker hold
   working flat out, against what they hold after sustained overload. Peaks are reported
   too (a single forward pass lifts the worker for a moment; that is not growth).
3. Checks: errors other than Busy, the daemon and worker pids unchanged (no crash or
   restart), memory growth over the level at capacity, status p99, Busy p99.

Usage: .venv/bin/python bench/overload.py [--seconds S] [--factor F] [--bin DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import struct
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, machine, private_daemon, save_result, write_section  # noqa: E402

PROTOCOL_VERSION = 2
BUSY = 2  # ErrorCode::Busy


def varint(value: int) -> bytes:
    """bincode 2 `standard()` unsigned integer encoding."""
    if value < 251:
        return bytes([value])
    if value < 1 << 16:
        return b"\xfb" + struct.pack("<H", value)
    if value < 1 << 32:
        return b"\xfc" + struct.pack("<I", value)
    return b"\xfd" + struct.pack("<Q", value)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


class RawClient:
    """Just enough of the protocol to time Status and Ping round trips."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        name = b"overload-probe"
        hello = b"\x00" + varint(PROTOCOL_VERSION) + varint(len(name)) + name + varint(0) + varint(1 << 24)
        self.sock.sendall(frame(hello))
        welcome = self.read()
        assert welcome[0] == 0, f"not a Welcome: {welcome[:16]!r}"
        self.next_id = 1

    def read(self) -> bytes:
        header = self._exactly(4)
        return self._exactly(struct.unpack(">I", header)[0])

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            data += chunk
        return data

    def round_trip(self, request_variant: int) -> float:
        """Sends a body-less request (0 Ping, 1 Status); seconds until its answer."""
        request_id = self.next_id
        self.next_id += 1
        started = time.perf_counter()
        self.sock.sendall(frame(b"\x01" + varint(request_id) + bytes([request_variant])))
        answer = self.read()
        elapsed = time.perf_counter() - started
        assert answer[0] == 1 and answer[1:1 + len(varint(request_id))] == varint(request_id), answer[:8]
        return elapsed

    def refused_embed(self, model: str) -> float | None:
        """Sends a batch-priority Embed of one text with a 1 ms deadline: seconds until the
        answer if it was `Busy` (a full model refuses batch work outright), else None (it
        was admitted, then answered Timeout or served)."""
        request_id = self.next_id
        self.next_id += 1
        text = b"probe"
        body = (b"\x05" + b"\x00" + varint(len(model)) + model.encode()  # Embed, ModelRef::Name
                + varint(1) + varint(len(text)) + text  # texts
                + b"\x00" + varint(1) + b"\x01" + varint(1))  # normalize, Batch, Some(1 ms)
        started = time.perf_counter()
        self.sock.sendall(frame(b"\x01" + varint(request_id) + body))
        answer = self.read()
        elapsed = time.perf_counter() - started
        tag = varint(request_id)
        assert answer[1:1 + len(tag)] == tag, answer[:8]
        error_code = answer[1 + len(tag)] if answer[0] == 3 else None
        return elapsed if error_code == BUSY else None


def run_probe(kind: str, socket_path: Path, stop, results) -> None:
    """A probe process: "status" times Status and Ping, "busy" times refused Embeds, every
    20 ms until `stop`; puts (name, seconds list) pairs on `results`."""
    client = RawClient(socket_path)
    status_times, ping_times, busy_times = [], [], []
    while not stop.is_set():
        if kind == "status":
            status_times.append(client.round_trip(1))
            ping_times.append(client.round_trip(0))
        else:
            elapsed = client.refused_embed("minilm")
            if elapsed is not None:
                busy_times.append(elapsed)
        time.sleep(0.02)
    if kind == "status":
        results.put(("status", status_times))
        results.put(("ping", ping_times))
    else:
        results.put(("busy", busy_times))


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def status(binaries: Path, socket_path: Path) -> dict:
    out = subprocess.run([str(binaries / "mlxctl"), "--socket", str(socket_path), "--no-fallback", "--json", "status"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def bench(binaries: Path, socket_path: Path, *args: str) -> dict:
    out = subprocess.run([str(binaries / "mlxctl"), "--socket", str(socket_path), "--no-fallback", "--json", "bench",
                          "--model", "minilm", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[round((len(ordered) - 1) * p)]


def median(values: list[int]) -> float:
    return percentile([float(v) for v in values], 0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--factor", type=float, default=50)
    parser.add_argument("--bin", default=str(ROOT / "target/release"))
    parser.add_argument("--daemon-args", default="", help="extra `mlxd serve` arguments, space-separated")
    args = parser.parse_args()
    binaries = Path(args.bin)

    with private_daemon(binaries, args.daemon_args.split()) as socket_path:
        bench(binaries, socket_path, "--connections", "1", "--requests", "1")  # loads the model
        before = status(binaries, socket_path)
        daemon_pid = before["pid"]
        worker_pid = next(m for m in before["models"] if m["name"] == "minilm")["worker_pid"]
        idle = pss_kib(daemon_pid) + pss_kib(worker_pid)

        def sampled(run):
            """Runs `run()` while sampling daemon + worker PSS every 0.5 s: (result, samples)."""
            stop, samples = threading.Event(), []

            def sample() -> None:
                while not stop.wait(0.5):
                    samples.append((pss_kib(daemon_pid), pss_kib(worker_pid)))

            thread = threading.Thread(target=sample)
            thread.start()
            try:
                return run(), samples
            finally:
                stop.set()
                thread.join()

        # Capacity with the same 64 connections the overload uses. The memory baseline is
        # the level during this run: the daemon and worker working at capacity (a batch's
        # activations are allocated while it runs and freed after, so idle memory is not
        # what a loaded worker uses). Overload may only add what its queue holds.
        capacity, at_capacity = sampled(
            lambda: bench(binaries, socket_path, "--connections", "64", "--duration", "10"))
        rate = capacity["requests_per_s"] * args.factor
        base_daemon = median([d for d, _ in at_capacity])
        base_worker = median([w for _, w in at_capacity])
        baseline = median([d + w for d, w in at_capacity])
        base_peak = max(d + w for d, w in at_capacity)

        # Each probe is its own process: Python threads would wait on each other's GIL
        # (up to its 5 ms switch interval), which a timing must not include.
        stop = multiprocessing.Event()
        results = multiprocessing.Queue()
        probes = [multiprocessing.Process(target=run_probe, args=(kind, socket_path, stop, results))
                  for kind in ("status", "busy")]
        for p in probes:
            p.start()
        try:
            overload, memory = sampled(lambda: bench(
                binaries, socket_path, "--connections", "64", "--duration", str(args.seconds),
                "--rate", f"{rate:.0f}", "--max-outstanding", "1000000"))
        finally:
            stop.set()
            timings = dict(results.get(timeout=30) for _ in range(3))  # status, ping, busy
            for p in probes:
                p.join()
        status_times, ping_times, busy_times = timings["status"], timings["ping"], timings["busy"]
        after = status(binaries, socket_path)
        final_daemon, final_worker = pss_kib(daemon_pid), pss_kib(worker_pid)
        final = final_daemon + final_worker
        worker_after = next(m for m in after["models"] if m["name"] == "minilm")["worker_pid"]

    errors = {code: n for code, n in overload["errors"].items()}
    crashed = after["pid"] != daemon_pid or worker_after != worker_pid
    peak = max([d + w for d, w in memory] + [final])
    last_third = memory[len(memory) * 2 // 3:] or [(final_daemon, final_worker)]
    level = median([d + w for d, w in last_third])
    level_daemon = median([d for d, _ in last_third])
    level_worker = median([w for _, w in last_third])
    growth = (level - baseline) / baseline
    status_p99 = percentile(status_times, 0.99) * 1000
    ping_p99 = percentile(ping_times, 0.99) * 1000
    busy_p99 = percentile(busy_times, 0.99) * 1000
    sent = overload["ok"] + overload["busy"] + sum(errors.values())
    verdict = lambda ok: "met" if ok else "NOT met"
    lines = [
        f"## Overload: open loop at {args.factor:g}x measured capacity for {args.seconds:g} s (issue 5)",
        "",
        f"- Date: {date.today().isoformat()}; machine: {machine()}",
        f"- Command: `.venv/bin/python bench/overload.py --seconds {args.seconds:g} --factor {args.factor:g}`"
        f"{' --daemon-args ' + repr(args.daemon_args) if args.daemon_args else ''}"
        " (part of `make bench`): capacity from `mlxctl bench --model minilm --connections 64` (closed loop, 10 s),"
        f" then `mlxctl bench --rate R --connections 64` open loop at R = {args.factor:g}x that, while raw clients"
        " time Status, Ping and a batch-priority Embed (refused with Busy while the queue is full) every 20 ms;"
        " PSS of daemon + worker is sampled every 0.5 s in both runs; growth compares the median over the"
        " overload's last third with the median at capacity.",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| capacity (closed loop, 64 clients) | {capacity['requests_per_s']:.0f} req/s | |",
        f"| offered rate | {rate:.0f} req/s ({sent} sent, {overload['dropped_by_generator']} not sent:"
        " generator behind) | |",
        f"| served | {overload['ok']} ({overload['requests_per_s']:.0f} req/s), latency p50"
        f" {overload['latency_ms']['p50']:.0f} ms, p99 {overload['latency_ms']['p99']:.0f} ms | |",
        f"| refused with Busy | {overload['busy']} | |",
        f"| errors other than Busy | {sum(errors.values())} {errors or ''} | 0: {verdict(not errors)} |",
        f"| daemon or worker crashed/restarted | {'yes' if crashed else 'no'} | no: {verdict(not crashed)} |",
        f"| PSS daemon + worker (median level) | {baseline / 1024:.0f} MiB at capacity -> {level / 1024:.0f} MiB"
        f" in the overload's last third (**{growth * 100:+.1f} %**): daemon {base_daemon / 1024:.0f} ->"
        f" {level_daemon / 1024:.0f} MiB, worker {base_worker / 1024:.0f} -> {level_worker / 1024:.0f} MiB."
        f" Peaks: {base_peak / 1024:.0f} MiB at capacity, {peak / 1024:.0f} MiB in the overload;"
        f" {final / 1024:.0f} MiB after, {idle / 1024:.0f} MiB idle before | < 10 %: {verdict(growth < 0.10)} |",
        f"| Status round trip during overload | p50 {percentile(status_times, 0.5) * 1000:.2f} ms,"
        f" p99 {status_p99:.2f} ms ({len(status_times)} probes) | p99 < 10 ms: {verdict(status_p99 < 10)} |",
        f"| Ping round trip during overload | p50 {percentile(ping_times, 0.5) * 1000:.2f} ms,"
        f" p99 {ping_p99:.2f} ms | |",
        f"| Busy answered (probe: batch Embed every 20 ms, timed like Status) | p50"
        f" {percentile(busy_times, 0.5) * 1000:.2f} ms, p99 {busy_p99:.2f} ms ({len(busy_times)} refusals)"
        f" | p99 < 2 ms: {verdict(busy_p99 < 2)} |",
        f"| Busy answered (as the load generator saw it, its own queueing included) | p50"
        f" {overload['busy_latency_ms']['p50']:.2f} ms, p99 {overload['busy_latency_ms']['p99']:.2f} ms,"
        f" max {overload['busy_latency_ms']['max']:.2f} ms | |",
    ]
    report = "\n".join(lines)
    print(report)
    write_section("overload", report)
    save_result("overload", {"memory_growth": growth, "status_p99_ms": status_p99, "busy_p99_ms": busy_p99,
                             "errors": sum(errors.values()), "crashed": bool(crashed)})


if __name__ == "__main__":
    main()
