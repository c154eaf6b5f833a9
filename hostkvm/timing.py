"""Latency summaries: per class of exit (first touch of a page vs repeat, per gpa page,
per predicted path), with percentiles and a log2 histogram, and an optional PNG plot."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hostkvm.errors import HostKvmError

PAGE_SHIFT = 12


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of already-sorted values (q in 0..100)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def log2_histogram(values: Iterable[int]) -> list[list[int]]:
    """``[[lo, hi, count], ...]``: buckets ``[2^k, 2^(k+1))`` that hold at least one value
    (a 0 goes to ``[0, 1)``)."""
    buckets: dict[int, int] = {}
    for v in values:
        k = v.bit_length()  # 0 for 0, k for 2^(k-1) <= v < 2^k
        buckets[k] = buckets.get(k, 0) + 1
    return [[0 if k == 0 else 1 << (k - 1), 1 << k, n] for k, n in sorted(buckets.items())]


def summarize(values: Iterable[int]) -> dict[str, Any]:
    """count, min, p50, p90, p99, max and a log2 histogram of *values* (ns)."""
    v = sorted(values)
    if not v:
        return {"count": 0}
    return {
        "count": len(v),
        "min": v[0],
        "p50": percentile(v, 50),
        "p90": percentile(v, 90),
        "p99": percentile(v, 99),
        "max": v[-1],
        "histogram": log2_histogram(v),
    }


def first_touch_classes(gpas: Sequence[int]) -> list[str]:
    """``first_touch`` for the first exit on each gpa page, ``repeat`` after it."""
    seen: set[int] = set()
    out = []
    for gpa in gpas:
        page = gpa >> PAGE_SHIFT
        out.append("repeat" if page in seen else "first_touch")
        seen.add(page)
    return out


def group(values: Sequence[int], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Summaries of *values* grouped by the parallel *keys*."""
    by: dict[str, list[int]] = {}
    for v, k in zip(values, keys, strict=True):
        by.setdefault(k, []).append(v)
    return {k: summarize(vs) for k, vs in sorted(by.items())}


def format_summary(name: str, s: Mapping[str, Any], unit: str = "ns") -> str:
    if not s.get("count"):
        return f"{name:<24} (no samples)"
    scale, u = (1000, "us") if unit == "ns" else (1, unit)
    f = lambda x: f"{x / scale:.1f}"  # noqa: E731
    return (f"{name:<24} n={s['count']:<7} min {f(s['min'])}  p50 {f(s['p50'])}  p90 {f(s['p90'])}  "
            f"p99 {f(s['p99'])}  max {f(s['max'])} {u}")


def plot_histograms(path: str, series: Mapping[str, Sequence[int]], title: str) -> None:
    """Draw one histogram per series (ns values, log x axis) into a PNG at *path*."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HostKvmError("--plot needs matplotlib: pip install 'hostkvm[plot]'") from None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, vals in series.items():
        if vals:
            ax.hist([v / 1000 for v in vals], bins=60, alpha=0.6, label=f"{name} (n={len(vals)})", log=True)
    ax.set_xlabel("latency (us)")
    ax.set_ylabel("exits")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
