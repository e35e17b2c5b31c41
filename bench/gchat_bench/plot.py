"""The sweep plot: latency percentiles and deliveries/s against clients."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt  # noqa: E402

PCTS = [
    ("p50_ms", "p50", "-"),
    ("p90_ms", "p90", "--"),
    ("p99_ms", "p99", "-."),
    ("p999_ms", "p99.9", ":"),
]


def plot_sweep(results: list, path: str, title: str = "") -> None:
    """Write a three- or four-panel PNG, x = number of clients, one colour
    per server: latency percentiles (log scale), deliveries/s (with the
    offered load of an open-loop run, and a red cross where the generator
    was the limit), the server's CPU time per delivery, and, where the runs
    measured it, the server's RSS growth per client."""
    servers = list(dict.fromkeys(r["server"] for r in results))
    # A fourth panel, memory per client, where the runs measured it.
    with_memory = any(r.get("server_rss_per_client_kb") for r in results)
    fig, axes = plt.subplots(1, 4 if with_memory else 3, figsize=(21 if with_memory else 16, 4.8))
    ax1, ax2, ax3 = axes[:3]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for si, srv in enumerate(servers):
        rows = sorted((r for r in results if r["server"] == srv), key=lambda r: r["clients"])
        xs = [r["clients"] for r in rows]
        col = colors[si % len(colors)]
        for key, label, style in PCTS:
            pts = [(x, r[key]) for x, r in zip(xs, rows) if r.get(key)]
            if pts:
                ax1.plot(
                    *zip(*pts), style, marker="o", ms=4, color=col, label="%s %s" % (srv, label)
                )
        pts = [(x, r["deliveries_per_s"]) for x, r in zip(xs, rows) if r.get("deliveries_per_s")]
        if pts:
            ax2.plot(*zip(*pts), "-", marker="o", color=col, label=srv)
        pts = [
            (x, r["server_cpu_us_per_delivery"])
            for x, r in zip(xs, rows)
            if r.get("server_cpu_us_per_delivery")
        ]
        if pts:
            ax3.plot(*zip(*pts), "-", marker="o", color=col, label=srv)
        if with_memory:
            pts = [
                (x, r["server_rss_per_client_kb"])
                for x, r in zip(xs, rows)
                if r.get("server_rss_per_client_kb")
            ]
            if pts:
                axes[3].plot(*zip(*pts), "-", marker="o", color=col, label=srv)
        sat = [
            (x, r["deliveries_per_s"])
            for x, r in zip(xs, rows)
            if r.get("generator_saturated") and r.get("deliveries_per_s")
        ]
        if sat:
            ax2.plot(*zip(*sat), "x", ms=10, color="red", label="%s: generator saturated" % srv)
    # Open loop: what the schedule asked for (rate x receivers).
    offered = sorted(
        {
            (r["clients"], r["rate"] * r.get("receivers", r["clients"]))
            for r in results
            if r.get("offered") and r.get("rate")
        }
    )
    if offered:
        ax2.plot(*zip(*offered), ":", color="gray", label="offered (rate x clients)")
    xs_all = sorted({r["clients"] for r in results})
    for ax in axes:
        if xs_all and xs_all[-1] / max(xs_all[0], 1) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel("clients")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_yscale("log")
    ax1.set_ylabel("latency (ms), send to receive")
    ax1.set_title("latency percentiles")
    ax1.legend(fontsize=7, ncol=max(1, len(servers)))
    ax2.set_ylabel("deliveries / s")
    ax2.set_ylim(bottom=0)
    ax2.set_title("throughput")
    ax2.legend(fontsize=8)
    ax3.set_ylabel("server CPU us / delivery")
    ax3.set_ylim(bottom=0)
    ax3.set_title("server CPU per delivery")
    ax3.legend(fontsize=8)
    if with_memory:
        axes[3].set_ylabel("server RSS growth per client (kB)")
        axes[3].set_ylim(bottom=0)
        axes[3].set_title("server memory per client")
        axes[3].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rooms(results: list, path: str, title: str = "") -> None:
    """The rooms sweep (--rooms K,K,...): x = room size (clients / rooms),
    log scale.  Left: the server's CPU time per delivery (the cost curve);
    middle: latency p50 and p99; right: deliveries/s and what was offered."""
    servers = list(dict.fromkeys(r["server"] for r in results))
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for si, srv in enumerate(servers):
        rows = sorted(
            (r for r in results if r["server"] == srv and r.get("rooms")),
            key=lambda r: r["room_size"],
        )
        xs = [r["room_size"] for r in rows]
        col = colors[si % len(colors)]
        pts = [
            (x, r["server_cpu_us_per_delivery"])
            for x, r in zip(xs, rows)
            if r.get("server_cpu_us_per_delivery")
        ]
        if pts:
            ax1.plot(*zip(*pts), "-", marker="o", color=col, label=srv)
            rooms = {r["room_size"]: r["rooms"] for r in rows}
            for x, y in pts:
                ax1.annotate(
                    "%.1f us\n(%d rooms)" % (y, rooms[x]),
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 6),
                    fontsize=8,
                )
            ax1.set_ylim(0, max(y for _, y in pts) * 1.3)
        for key, label, style in (("p50_ms", "p50", "-"), ("p99_ms", "p99", "-.")):
            pts = [(x, r[key]) for x, r in zip(xs, rows) if r.get(key)]
            if pts:
                ax2.plot(
                    *zip(*pts), style, marker="o", ms=4, color=col, label="%s %s" % (srv, label)
                )
        pts = [(x, r["deliveries_per_s"]) for x, r in zip(xs, rows) if r.get("deliveries_per_s")]
        if pts:
            ax3.plot(*zip(*pts), "-", marker="o", color=col, label=srv)
        sat = [
            (x, r["deliveries_per_s"])
            for x, r in zip(xs, rows)
            if r.get("generator_saturated") and r.get("deliveries_per_s")
        ]
        if sat:
            ax3.plot(*zip(*sat), "x", ms=10, color="red", label="%s: generator saturated" % srv)
    offered = sorted(
        {
            (r["room_size"], r["rate"] * r["room_size"])
            for r in results
            if r.get("offered") and r.get("rate") and r.get("rooms")
        }
    )
    if offered:
        ax3.plot(*zip(*offered), ":", color="gray", label="offered (rate x room size)")
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log")
        ax.set_xlabel("clients per room (log)")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("server CPU us / delivery")
    ax1.set_title("server CPU per delivery")
    ax1.legend(fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel("latency (ms), send to receive")
    ax2.set_title("latency")
    ax2.legend(fontsize=8)
    ax3.set_ylabel("deliveries / s")
    ax3.set_ylim(bottom=0)
    ax3.set_title("throughput")
    ax3.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
