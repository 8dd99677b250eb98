"""Overload: an open-loop rate at 50x the measured embedding capacity for 30 s (issue 5).

1. Measures capacity: `mlxctl bench --model minilm --connections 64` closed loop (one
   short text per request), requests/s.
2. Drives `mlxctl bench --rate 50xC --connections 64` open loop for 30 s, while a separate
   connection asks for `Status` every 20 ms (a raw protocol client written here, so its
   timing includes nothing but the socket and the daemon) and the daemon's and worker's
   memory (PSS, /proc/PID/smaps_rollup) is sampled every second.
3. Checks: errors other than Busy, the daemon and worker pids unchanged (no crash or
   restart), memory growth against the warm baseline, status p99, Busy p99.

Usage: .venv/bin/python bench/overload.py [--seconds S] [--factor F] [--bin DIR]
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, machine, private_daemon, write_section  # noqa: E402

PROTOCOL_VERSION = 2


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--factor", type=float, default=50)
    parser.add_argument("--bin", default=str(ROOT / "target/release"))
    parser.add_argument("--daemon-args", default="", help="extra `mlxd serve` arguments, space-separated")
    args = parser.parse_args()
    binaries = Path(args.bin)

    with private_daemon(binaries, args.daemon_args.split()) as socket_path:
        # Capacity with the same 64 connections the overload uses, so the warm baseline has
        # seen full batches (the worker's MLX buffer cache grows to the largest batch once).
        capacity = bench(binaries, socket_path, "--connections", "64", "--duration", "5")
        rate = capacity["requests_per_s"] * args.factor
        before = status(binaries, socket_path)
        daemon_pid = before["pid"]
        worker_pid = next(m for m in before["models"] if m["name"] == "minilm")["worker_pid"]
        base_daemon, base_worker = pss_kib(daemon_pid), pss_kib(worker_pid)
        baseline = base_daemon + base_worker

        stop = threading.Event()
        status_times: list[float] = []
        ping_times: list[float] = []
        memory: list[tuple[int, int]] = []

        def probe() -> None:
            client = RawClient(socket_path)
            while not stop.is_set():
                status_times.append(client.round_trip(1))
                ping_times.append(client.round_trip(0))
                time.sleep(0.02)

        def sample() -> None:
            while not stop.wait(1.0):
                memory.append((pss_kib(daemon_pid), pss_kib(worker_pid)))

        threads = [threading.Thread(target=probe), threading.Thread(target=sample)]
        for t in threads:
            t.start()
        try:
            overload = bench(binaries, socket_path, "--connections", "64", "--duration", str(args.seconds),
                             "--rate", f"{rate:.0f}", "--max-outstanding", "1000000")
        finally:
            stop.set()
            for t in threads:
                t.join()
        after = status(binaries, socket_path)
        final_daemon, final_worker = pss_kib(daemon_pid), pss_kib(worker_pid)
        final = final_daemon + final_worker
        worker_after = next(m for m in after["models"] if m["name"] == "minilm")["worker_pid"]

    errors = {code: n for code, n in overload["errors"].items()}
    crashed = after["pid"] != daemon_pid or worker_after != worker_pid
    peak = max([d + w for d, w in memory] + [final])
    peak_daemon = max([d for d, _ in memory] + [final_daemon])
    peak_worker = max([w for _, w in memory] + [final_worker])
    growth = (peak - baseline) / baseline
    status_p99 = percentile(status_times, 0.99) * 1000
    ping_p99 = percentile(ping_times, 0.99) * 1000
    busy_p99 = overload["busy_latency_ms"]["p99"]
    sent = overload["ok"] + overload["busy"] + sum(errors.values())
    verdict = lambda ok: "met" if ok else "NOT met"
    lines = [
        f"## Overload: open loop at {args.factor:g}x measured capacity for {args.seconds:g} s (issue 5)",
        "",
        f"- Date: {date.today().isoformat()}; machine: {machine()}",
        f"- Command: `.venv/bin/python bench/overload.py --seconds {args.seconds:g} --factor {args.factor:g}`"
        f"{' --daemon-args ' + repr(args.daemon_args) if args.daemon_args else ''}"
        " (part of `make bench`): capacity from `mlxctl bench --model minilm --connections 64` (closed loop, 5 s),"
        f" then `mlxctl bench --rate R --connections 64` open loop at R = {args.factor:g}x that, while a raw"
        " client times Status and Ping every 20 ms and PSS of daemon + worker is sampled every second.",
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
        f"| PSS daemon + worker | {baseline / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB,"
        f" {final / 1024:.0f} MiB after ({growth * 100:+.1f} %); daemon {base_daemon / 1024:.0f} -> peak"
        f" {peak_daemon / 1024:.0f} MiB, worker {base_worker / 1024:.0f} -> peak {peak_worker / 1024:.0f} MiB"
        f" | < 10 %: {verdict(growth < 0.10)} |",
        f"| Status round trip during overload | p50 {percentile(status_times, 0.5) * 1000:.2f} ms,"
        f" p99 {status_p99:.2f} ms ({len(status_times)} probes) | p99 < 10 ms: {verdict(status_p99 < 10)} |",
        f"| Ping round trip during overload | p50 {percentile(ping_times, 0.5) * 1000:.2f} ms,"
        f" p99 {ping_p99:.2f} ms | |",
        f"| Busy answered (client-measured) | p50 {overload['busy_latency_ms']['p50']:.2f} ms,"
        f" p99 {busy_p99:.2f} ms, max {overload['busy_latency_ms']['max']:.2f} ms | p99 < 2 ms: {verdict(busy_p99 < 2)} |",
    ]
    report = "\n".join(lines)
    print(report)
    write_section("overload", report)


if __name__ == "__main__":
    main()
