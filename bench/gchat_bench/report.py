"""Turning result dicts into a table, medians and ratios."""

from __future__ import annotations

import statistics
from typing import Optional

# (heading, key, format) of the table's columns; a scenario adds its own.
COLUMNS = [
    ("server", "server", "s"),
    ("clients", "clients", "d"),
    ("snd", "senders", "d"),
    ("rate/s", "rate", ".0f"),
    ("deliv/s", "deliveries_per_s", ".0f"),
    ("p50ms", "p50_ms", ".2f"),
    ("p90ms", "p90_ms", ".2f"),
    ("p99ms", "p99_ms", ".2f"),
    ("p999ms", "p999_ms", ".2f"),
    ("maxms", "max_ms", ".1f"),
    ("sent", "sent", "d"),
    ("lost", "lost", "d"),
    ("dup", "duplicated", "d"),
    ("reord", "reordered", "d"),
    ("disc", "disconnected", "d"),
    ("cerr", "connect_errors", "d"),
    ("us/dlv", "server_cpu_us_per_delivery", ".2f"),
    ("srv%", "server_cpu_pct", ".0f"),
    ("rssMB", "server_rss_mb", ".1f"),
    ("gen%", "generator_cpu_pct", ".0f"),
    ("host%", "host_cpu_pct", ".0f"),
    ("gsat", "generator_saturated", "b"),
]
EXTRA = {
    "join": [("connect_s", "connect_s", ".2f"), ("join_s", "join_s", ".2f")],
    "idle": [("kB/client", "server_rss_per_client_kb", ".1f")],
    "slow": [
        ("ctl_p99", "control_p99_ms", ".2f"),
        ("p99/ctl", "p99_vs_control", ".2f"),
        ("slow_cut", "slow_closed_by_server", "d"),
    ],
    "saturate": [("window", "window", "d")],
    "fanout": [("lag50", "send_lag_p50_ms", ".2f"), ("lag99", "send_lag_p99_ms", ".2f")],
}
# Keys compared in `compare`: (key, label, higher is better).
RATIO_KEYS = [
    ("deliveries_per_s", "deliveries/s", True),
    ("p50_ms", "p50", False),
    ("p99_ms", "p99", False),
    ("p999_ms", "p99.9", False),
    ("server_cpu_us_per_delivery", "CPU us/delivery", False),
    ("server_rss_mb", "RSS", False),
    ("join_s", "join time", False),
    ("server_rss_per_client_kb", "RSS/client", False),
]


def fmt(v, f: str) -> str:
    if v is None:
        return "-"
    if f == "b":
        return "YES" if v else "no"
    if f == "d":
        return "%d" % v if isinstance(v, (int, float)) else str(v)
    if f == "s":
        return str(v)
    return format(v, f)


def table(results: list) -> str:
    """A plain-text table, one row per result."""
    if not results:
        return ""
    cols = list(COLUMNS)
    for scen in dict.fromkeys(r["scenario"] for r in results):
        cols += [c for c in EXTRA.get(scen, []) if c not in cols]
    if any(r.get("rooms") for r in results):
        # Rooms: how many, and lines that reached a client of another room.
        cols.insert(2, ("rooms", "rooms", "d"))
        cols.insert(cols.index(("dup", "duplicated", "d")), ("leaked", "leaked", "d"))
    if any(r.get("runs", 1) > 1 for r in results):
        cols.insert(2, ("runs", "runs", "d"))
    if any("nodes" in r for r in results):
        # A cluster: srv% and us/dlv are the sums over its processes; the
        # CPU of each node (with its workers) and of redis-server follow.
        at = cols.index(("srv%", "server_cpu_pct", ".0f")) + 1
        nmax = max(r.get("nodes", 0) for r in results)
        cols[at:at] = [("n%d%%" % i, "node%d_cpu_pct" % i, ".0f") for i in range(nmax)] + [
            ("redis%", "redis_cpu_pct", ".0f")
        ]
    rows = [[h for h, _, _ in cols]]
    for r in results:
        rows.append([fmt(r.get(k), f) for _, k, f in cols])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = []
    for j, row in enumerate(rows):
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def median_result(runs: list) -> dict:
    """The median of each numeric key over repeated runs of one setting.

    Booleans are OR-ed (one saturated run taints the median) and counts of
    loss are summed (one lost message in any run matters).
    """
    out = dict(runs[0])
    summed = {"lost", "duplicated", "reordered", "disconnected", "connect_errors", "leaked"}
    for k in runs[0]:
        vals = [r.get(k) for r in runs]
        if k in summed:
            out[k] = sum(v or 0 for v in vals)
        elif all(isinstance(v, bool) for v in vals):
            out[k] = any(vals)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = statistics.median(vals)
        elif isinstance(vals[0], (int, float)) and not isinstance(vals[0], bool):
            nums = [v for v in vals if isinstance(v, (int, float))]
            out[k] = statistics.median(nums) if nums else None
    out["runs"] = len(runs)
    out["summary"] = "median"
    return out


def ratio(a, b) -> Optional[float]:
    if a is None or b is None or not b:
        return None
    return a / b


def ratios(subject: dict, base: dict) -> dict:
    """subject/base for each compared key present in both."""
    out = {}
    for k, _, _ in RATIO_KEYS:
        r = ratio(subject.get(k), base.get(k))
        if r is not None:
            out[k] = r
    return out


def ratio_table(subject: dict, bases: list) -> str:
    """Lines saying how `subject` compares with each baseline."""
    lines = []
    for b in bases:
        lines.append(
            "%s vs %s (clients=%s):" % (subject["server"], b["server"], subject["clients"])
        )
        for k, label, higher in RATIO_KEYS:
            r = ratio(subject.get(k), b.get(k))
            if r is None:
                continue
            # Within 2% is noise on this machine, not a difference.
            better = (r > 1) == higher if abs(r - 1) > 0.02 else None
            word = {True: "better", False: "worse", None: "same"}[better]
            lines.append(
                "  %-16s %10s  vs %10s   x%.2f (%s)"
                % (label, fmt(subject.get(k), ".3g"), fmt(b.get(k), ".3g"), r, word)
            )
    return "\n".join(lines)
