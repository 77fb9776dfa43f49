"""``python -m bench.plot DIR|FILE [--out PNG]``: the latency curve as a picture.

Reads the JSON of ``python -m bench curve --json`` (FILE, or DIR/curve.json as
``python -m bench all`` writes it) and draws p50, p99 and p999 of the daemon and,
when measured, of the ceiling: on the left against the closed-loop pair count,
on the right against the rate (achieved in closed loop, offered in open loop),
where queueing shows as the latency rising with the rate. Needs matplotlib (the
``bench`` extra: ``pip install '.[bench]'``); the daemon does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

try:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a benchmark machine
    from matplotlib import pyplot as plt
except ImportError:  # reported by plot(): the extra is optional
    plt = None

PERCENTILES = (("p50_ms", "p50", "tab:blue"), ("p99_ms", "p99", "tab:orange"),
               ("p999_ms", "p999", "tab:red"))
SERVERS = (("daemon", "-", "o"), ("ceiling", "--", "x"))


def load(path: Path) -> dict[str, Any]:
    """The curve's JSON from a file, or from DIR/curve.json."""
    if path.is_dir():
        path = path / "curve.json"
    data = json.loads(path.read_text())
    if data.get("workload") != "curve":
        raise ValueError(f"{path} is not the JSON of python -m bench curve")
    return data


def points(data: dict[str, Any], server: str, mode: str) -> list[dict[str, Any]]:
    """The medians of one server's points of one mode, each with its pairs, rate
    (achieved; offered in open loop) and open-loop share."""
    out = []
    for case in data.get("cases", []):
        if case.get("mode") != mode:
            continue
        agg = case if server == "daemon" else case.get("ceiling")
        if not agg or not agg.get("median"):
            continue
        med = dict(agg["median"])
        med["pairs"] = case["pairs"]
        med["rate"] = case["offered_per_s"] if mode == "open" else med.get("msgs_per_s")
        med["fraction"] = case.get("offered_fraction")
        out.append(med)
    return out


def plot(source: Path, out: Path) -> Path:
    """Draw the curve of ``source`` into the PNG ``out``; returns ``out``."""
    if plt is None:
        raise ImportError("bench.plot needs matplotlib: pip install '.[bench]'")
    from matplotlib.lines import Line2D

    data = load(source)
    settings = data.get("curve", {})
    open_pairs = settings.get("open_pairs")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    for server, style, marker in SERVERS:
        closed = sorted(points(data, server, "closed"), key=lambda p: p["pairs"])
        # the open-loop points, then the closed-loop one they are shares of
        ramp = sorted(points(data, server, "open"), key=lambda p: p["rate"] or 0)
        ramp += [p for p in closed if p["pairs"] == open_pairs and p.get("rate")]
        for key, _, color in PERCENTILES:
            pts = [p for p in closed if p.get(key) is not None]
            left.plot([p["pairs"] for p in pts], [p[key] for p in pts], style, marker=marker,
                      color=color)
            pts = [p for p in ramp if p.get(key) is not None and p.get("rate")]
            right.plot([p["rate"] for p in pts], [p[key] for p in pts], style, marker=marker,
                       color=color)
        if server == "daemon":
            for p in closed:
                if p.get("p50_ms") and p.get("rate"):
                    left.annotate(f"{fmt_rate(p['rate'])}/s", (p["pairs"], p["p50_ms"]),
                                  textcoords="offset points", xytext=(4, -12), fontsize=8)
            for p in ramp:
                if p.get("p50_ms") and p.get("rate"):
                    name = "closed" if p["fraction"] is None else f"{p['fraction']:.0%}"
                    right.annotate(name, (p["rate"], p["p50_ms"]),
                                   textcoords="offset points", xytext=(4, -12), fontsize=8)
    left.set(xscale="log", yscale="log", xlabel="pairs, closed loop (daemon's msgs/s beside)",
             ylabel="latency, ms", title="Closed loop: send → delivery")
    right.set(yscale="log", xlabel="messages/s offered (closed loop: achieved)",
              ylabel="latency, ms",
              title=f"Open loop, {open_pairs} pairs: due time → delivery")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=color, label=name) for _, name, color in PERCENTILES]
    handles += [Line2D([], [], color="grey", linestyle=style, marker=marker, label=server)
                for server, style, marker in SERVERS]
    left.legend(handles=handles, fontsize=8)
    runs = max((len(c.get("runs", [])) for c in data.get("cases", [])), default=0)
    fig.suptitle(f"qqchat chat latency under load ({data.get('db')}), medians of {runs} "
                 f"run(s)", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def fmt_rate(rate: float) -> str:
    return f"{rate / 1000:.1f}k" if rate >= 1000 else f"{rate:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot",
                                description="Draw the latency curve of python -m bench curve "
                                            "--json (or a bench all directory) to a PNG.")
    p.add_argument("source", type=Path, help="curve JSON file, or a directory with curve.json")
    p.add_argument("--out", type=Path,
                   help="PNG to write (DIR/latency.png, or FILE with .png)")
    args = p.parse_args(argv)
    out = args.out or (args.source / "latency.png" if args.source.is_dir()
                       else args.source.with_suffix(".png"))
    try:
        print(plot(args.source, out))
    except (ImportError, OSError, ValueError, KeyError) as e:
        print(f"bench.plot: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
