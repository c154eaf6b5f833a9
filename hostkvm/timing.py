"""Latency summaries: per class of exit (first touch of a page vs repeat, per gpa page,
per predicted path), with percentiles and a log2 histogram, and an optional PNG plot."""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hostkvm.errors import HostKvmError

PAGE_SHIFT = 12


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of already-sorted values (q in 0..100)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    # The smallest value with at least q% of the values at or below it: rank ceil(q/100 * n).
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values) / 100) - 1))
    return sorted_values[k]


def log2_histogram(values: Iterable[int]) -> list[list[int]]:
    """``[[lo, hi, count], ...]``: buckets ``[2^k, 2^(k+1))`` that hold at least one value
    (a 0 goes to ``[0, 1)``)."""
    return _log2_histogram_sorted(sorted(values))


def _log2_histogram_sorted(v: Sequence[int]) -> list[list[int]]:
    # Cut the sorted values at each power of two: a bisection per bucket, not a step per value.
    if not v:
        return []
    if v[0] < 0:
        raise ValueError(f"log2 histogram of a negative value ({v[0]})")
    out = []
    lo_index = 0
    for k in range(v[0].bit_length(), v[-1].bit_length() + 1):
        hi = 1 << k  # bucket k holds 2^(k-1) <= x < 2^k (bucket 0 holds 0)
        hi_index = bisect.bisect_left(v, hi, lo_index)
        if hi_index > lo_index:
            out.append([0 if k == 0 else hi >> 1, hi, hi_index - lo_index])
        lo_index = hi_index
    return out


def summarize(values: Iterable[int]) -> dict[str, Any]:
    """count, min, p50, p90, p99, max and a log2 histogram of *values* (ns)."""
    return summarize_sorted(sorted(values))


def summarize_sorted(v: Sequence[int]) -> dict[str, Any]:
    """:func:`summarize` of values that are already sorted."""
    if not v:
        return {"count": 0}
    return {
        "count": len(v),
        "min": v[0],
        "p50": percentile(v, 50),
        "p90": percentile(v, 90),
        "p99": percentile(v, 99),
        "max": v[-1],
        "histogram": _log2_histogram_sorted(v),
    }


def first_touch_classes(gpas: Sequence[int]) -> list[str]:
    """``first_touch`` for the first exit on each gpa page, ``repeat`` after it."""
    pages = [gpa >> PAGE_SHIFT for gpa in gpas]
    out = ["repeat"] * len(pages)
    # page -> index of its first exit: built backwards, so the first index is written last
    for i in dict(zip(reversed(pages), range(len(pages) - 1, -1, -1))).values():
        out[i] = "first_touch"
    return out


_FEW_KEYS = 16  # up to this many distinct keys, group() filters once per key in C
_FEW_OTHERS = 64  # a group that lacks at most this many values is cut out of the sorted whole


def group(values: Sequence[Any], keys: Sequence[Any], *, sorted_values: Sequence[int] | None = None
          ) -> dict[Any, dict[str, Any]]:
    """Summaries of *values* grouped by the parallel *keys*, in key order.

    *sorted_values*, ``sorted(values)`` if the caller has it, spares sorting the groups that
    hold all but a few of the values (a run's repeat exits, or its one page): their sorted
    values are the whole less the few others, removed by bisection.
    """
    if len(values) != len(keys):
        raise ValueError(f"{len(values)} values but {len(keys)} keys")
    if sorted_values is not None and len(sorted_values) != len(values):
        raise ValueError(f"{len(values)} values but {len(sorted_values)} sorted values")
    distinct = set(keys)
    by: dict[Any, Sequence[int]]
    if len(distinct) == 1:
        by = {k: values for k in distinct}
    elif len(distinct) <= _FEW_KEYS:
        by = {k: list(itertools.compress(values, map(operator.eq, keys, itertools.repeat(k)))) for k in distinct}
    else:
        lists: dict[Any, list[int]] = {k: [] for k in distinct}
        for v, k in zip(values, keys):
            lists[k].append(v)
        by = lists
    out = {}
    for k in sorted(distinct):
        others = len(values) - len(by[k])
        if sorted_values is None or others > _FEW_OTHERS:
            out[k] = summarize(by[k])
            continue
        rest = sorted_values
        if others:
            rest = list(sorted_values)
            for other in distinct - {k}:
                for x in by[other]:
                    del rest[bisect.bisect_left(rest, x)]
        out[k] = summarize_sorted(rest)
    return out


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
