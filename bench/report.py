"""The whole story in one place: every goal next to its measured figure (from the results
the other benchmarks saved in bench/results/), printed as a table, written to the summary
section of BENCHMARKS.md, and drawn where a chart reads better than numbers
(bench/charts/memory.png, bench/charts/generation.png).

Usage: .venv/bin/python bench/report.py   (the last step of `make bench`)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, load_result, write_section  # noqa: E402

CHARTS = ROOT / "bench" / "charts"


def verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def goals() -> tuple[list[str], list[str]]:
    rows, missing = [], []

    def need(name: str) -> dict | None:
        result = load_result(name)
        if result is None:
            missing.append(name)
        return result

    if decode := need("decode"):
        r = decode["ratio"]
        rows.append(f"| decode tokens/s through mlxd / in-process mlx-lm (3, 8) | >= 0.97 | {r:.3f} | {verdict(r >= 0.97)} |")
    if load := need("load"):
        for model, s in load["seconds"].items():
            r = s["reload"] / s["cold"]
            rows.append(f"| reload / cold load, {model} (4) | <= 0.3 | {r:.2f} ({s['reload']:.2f} s / {s['cold']:.2f} s)"
                        f" | {verdict(r <= 0.3)} |")
    if batching := need("embed_batching"):
        r = batching["ratio"]
        rows.append(f"| embeddings at 32 clients, batched / unbatched (5, 8) | >= 4x | {r:.2f}x | {verdict(r >= 4)} |")
    if generation := need("generation"):
        s, v = generation["scale_8_vs_1"], generation["versus_mlx_lm_server_at_8"]
        rows.append(f"| generation, 8 streams / 1 (5, 8) | >= 4x | {s:.2f}x | {verdict(s >= 4)} |")
        rows.append(f"| generation at 8, mlxd / mlx_lm.server (5, 8) | >= 1 | {v:.2f}x | {verdict(v >= 1)} |")
    if overload := need("overload"):
        g = overload["memory_growth"]
        rows.append(f"| overload 50x: errors other than Busy, crashes (5) | 0, none | {overload['errors']},"
                    f" {'a crash' if overload['crashed'] else 'none'} |"
                    f" {verdict(overload['errors'] == 0 and not overload['crashed'])} |")
        rows.append(f"| overload 50x: memory growth (5) | < 10 % | {g * 100:+.1f} % | {verdict(g < 0.10)} |")
        rows.append(f"| overload 50x: Status p99 (5) | < 10 ms | {overload['status_p99_ms']:.2f} ms |"
                    f" {verdict(overload['status_p99_ms'] < 10)} |")
        rows.append(f"| overload 50x: Busy answered p99 (5) | < 2 ms | {overload['busy_p99_ms']:.2f} ms |"
                    f" {verdict(overload['busy_p99_ms'] < 2)} |")
    if memory := need("memory"):
        ratios = memory["ratio_mlxd_in_process"]
        n = "8" if "8" in ratios else max(ratios, key=int)
        rows.append(f"| memory (PSS), mlxd / N in-process processes at N = {n} (8) | <= 0.2 | {ratios[n]:.3f} |"
                    f" {verdict(ratios[n] <= 0.2)} |")
    if overhead := need("overhead"):
        r = overhead["embed_ratio"]
        rows.append(f"| one short embedding, p50 through mlxd / in-process (8) | <= 1.10 | {r:.3f} | {verdict(r <= 1.10)} |")
        ping = overhead["ping_us"]
        rows.append(f"| Ping round trip (8) | (reported) | p50 {ping['p50']:.0f} µs, p99 {ping['p99']:.0f} µs | - |")
        frames = overhead["frames_per_s"]
        rows.append(f"| small-frame round trips/s, 1 / 16 connections (8) | (reported) | {frames['1']:,.0f} /"
                    f" {frames['16']:,.0f} | - |")
        first = overhead["first_embedding_s"]
        rows.append(f"| first embedding: daemon warm / cold / stdio fallback (8) | (reported) |"
                    f" {first['warm'] * 1000:.0f} / {first['cold'] * 1000:.0f} / {first['stdio'] * 1000:.0f} ms | - |")
    if http := need("http"):
        r, v = http["embed_ratio"], http["chat_ratio_at_8"]
        rows.append(f"| one short embedding, p50 over HTTP / binary protocol (16) | <= 1.15 | {r:.3f} | {verdict(r <= 1.15)} |")
        rows.append(f"| chat completions at 8 clients, mlxd / mlx_lm.server, same openai client (16) | >= 1 |"
                    f" {v:.2f}x | {verdict(v >= 1)} |")
    if clients := need("clients"):
        r = clients["ratio_to_rust"]
        for name in ("python", "node"):
            rows.append(f"| one short embedding, p50 through the {name.capitalize()} client / Rust client (17) | <= 1.3 |"
                        f" {r[name]:.3f} | {verdict(r[name] <= 1.3)} |")
        rows.append(f"| the same through the openai SDK over HTTP / Rust client (17) | (reported) | {r['openai']:.3f} | - |")
    if constrained := need("constrained"):
        u, c = constrained["unconstrained_loss"], constrained["constrained_loss"]
        rows.append(f"| 8 streams, half JSON-schema constrained: unconstrained streams' decode rate lost (19) | < 5 % |"
                    f" {u * 100:.1f} % | {verdict(u < 0.05)} |")
        rows.append(f"| the same: constrained streams' rate lost vs unconstrained (19) | < 20 % | {c * 100:.1f} % |"
                    f" {verdict(c < 0.20)} |")
    return rows, missing


def charts() -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(charts skipped: matplotlib is not installed; `scripts/setup.sh --bench` installs it)"]
    CHARTS.mkdir(exist_ok=True)

    def line_chart(file: str, series: dict[str, dict[str, float]], xticks: list[int], xlabel: str, ylabel: str,
                   title: str, scale: float = 1.0) -> None:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        for name, points in series.items():
            if points:
                xs = sorted(points, key=int)
                ax.plot([int(x) for x in xs], [points[x] * scale for x in xs], marker="o", label=name)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xticks=xticks)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(CHARTS / file)
        plt.close(fig)

    made = []
    if memory := load_result("memory"):
        line_chart("memory.png", memory["pss_mib"], [int(n) for n in memory["clients"]],
                   "client processes (each embeds and generates)", "total PSS, GiB",
                   "Memory of N clients using MiniLM + SmolLM2", scale=1 / 1024)
        made.append("![PSS vs N](bench/charts/memory.png)")
    if generation := load_result("generation"):
        line_chart("generation.png", generation["tokens_per_s"], [1, 4, 8], "concurrent generation requests",
                   "aggregate tokens/s", "SmolLM2-135M decode throughput")
        made.append("![tokens/s vs concurrency](bench/charts/generation.png)")
    return made


def main() -> None:
    rows, missing = goals()
    any_result = next((load_result(n) for n in ("memory", "overhead", "decode") if load_result(n)), None)
    lines = [
        "## Summary: every goal and its measured figure",
        "",
        f"- Machine: {any_result['machine'] if any_result else 'unknown'}; results dated"
        f" {', '.join(sorted({r['date'] for n in ('decode', 'load', 'embed_batching', 'generation', 'overload', 'memory', 'overhead', 'http', 'clients', 'constrained') if (r := load_result(n))}))}.",
        "- Command: `make bench` (every benchmark below, then `bench/report.py`). The issue each goal comes from is"
        " in parentheses; sections below give the method, the raw numbers and, where a goal is missed, why.",
        "",
        "| goal | target | measured | |",
        "|---|---|---|---|",
        *rows,
    ]
    if missing:
        lines += ["", f"Not measured in this run: {', '.join(missing)}."]
    lines += ["", *charts()]
    report = "\n".join(lines)
    print(report)
    write_section("summary", report)


if __name__ == "__main__":
    main()
