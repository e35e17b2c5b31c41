"""Prometheus metrics, read from the hub's own counters at scrape time.

Nothing is counted for Prometheus on the hot path: the hub, the chat and
the transport already keep plain integers (the ones /stats shows) and two
histograms per batch (hub.Histogram); a custom collector turns them into
metric families when /metrics is scraped.  prometheus-client writes the
exposition format and adds the process collector (CPU, RSS, descriptors).
"""

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector

from gchat.outbox import Outbox


def _counter(name, documentation, value):
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _gauge(name, documentation, value):
    return GaugeMetricFamily(name, documentation, value=value)


def _histogram(name, documentation, histogram):
    buckets, running = [], 0
    for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.total)


class GchatCollector:
    """The gchat_* families of one ChatServer."""

    def __init__(self, chat_server):
        self.server = chat_server

    def describe(self):
        return []  # families are known only at scrape time; no up-front check

    def collect(self):
        server = self.server
        hub = server.hub
        chat = hub.chat
        counts, stats = chat.counts, hub.stats
        clients = GaugeMetricFamily(
            "gchat_clients", "Clients connected, by transport.", labels=["transport"]
        )
        for transport, count in sorted(server.by_transport.items()):
            clients.add_metric([transport], count)
        yield clients
        yield _gauge(
            "gchat_max_clients",
            "Connections this process serves at once (--max-clients, or the open-file "
            "limit less fd_headroom); more are refused.",
            server.max_clients,
        )
        members = GaugeMetricFamily(
            "gchat_members",
            "Clients by state: named (in a room) or naming (not yet named).",
            labels=["state"],
        )
        named = chat.named_here()
        members.add_metric(["named"], named)
        members.add_metric(["naming"], len(chat.connected) - named)
        yield members
        rooms = GaugeMetricFamily(
            "gchat_rooms",
            "Rooms, by state: occupied or empty (kept for their history until dropped).",
            labels=["state"],
        )
        empty = len(chat.rooms.empty)
        rooms.add_metric(["occupied"], len(chat.rooms) - empty)
        rooms.add_metric(["empty"], empty)
        yield rooms
        sessions = GaugeMetricFamily(
            "gchat_sessions",
            "Sessions (/session), by state: connected, or away (dropped, within --resume-window).",
            labels=["state"],
        )
        away = len(chat.sessions.away)
        sessions.add_metric(["connected"], len(chat.sessions) - away)
        sessions.add_metric(["away"], away)
        yield sessions
        yield _counter(
            "gchat_rooms_dropped",
            "Empty rooms dropped to make way for new ones.",
            chat.rooms.dropped,
        )
        yield _counter("gchat_lines_received", "Lines received from clients.", counts["lines"])
        yield _counter(
            "gchat_deliveries", "Broadcast lines delivered, one per recipient.", stats["deliveries"]
        )
        yield _counter(
            "gchat_bytes_sent",
            "Bytes of output handed to the clients' send queues (before WebSocket framing).",
            counts["bytes_out"],
        )
        yield _counter("gchat_arrivals", "Clients that took a name.", counts["arrivals"])
        yield _counter("gchat_departures", "Clients that left.", counts["departures"])
        yield _counter("gchat_joins", "Moves to another room (/join).", counts["joins"])
        yield _counter(
            "gchat_slow_disconnects",
            "Clients disconnected for a full send queue.",
            stats["slow_disconnects"],
        )
        yield _counter(
            "gchat_dropped_lines",
            "Lines skipped for slow clients under --slow-policy drop.",
            Outbox.lines_dropped,
        )
        yield _counter(
            "gchat_flood_pauses",
            "Times a reader paused over its flood allowance.",
            server.flood_pauses,
        )
        yield _gauge("gchat_inbox_events", "Events waiting for the hub.", hub.inbox.qsize())
        yield _counter("gchat_faults", "Faults while handling one client's event.", stats["faults"])
        yield _counter(
            "gchat_accept_pauses",
            "Pauses of accept() for want of descriptors.",
            server.server.accept_pauses,
        )
        yield _counter(
            "gchat_refused",
            "Connections refused over --max-clients or --max-per-ip.",
            sum(server.refused.values()),
        )
        if hub.bus is not None:
            yield from _bus_families(hub.bus.snapshot())
        yield _histogram(
            "gchat_batch_events", "Events handled per wake-up of the hub.", hub.batch_sizes
        )
        yield _histogram(
            "gchat_flush_seconds", "Seconds one flush of a batch took.", hub.flush_seconds
        )


# The cluster's bus (--redis): /stats's bus_* counters, as Prometheus
# families (gauges for states and sizes, counters for events).
BUS_GAUGES = {
    "bus_up": "1 while Redis answers, 0 during an outage.",
    "bus_pending": "Entries waiting to be published.",
    "bus_held_lines": "Chat lines held while Redis is down (bounded by --bus-backlog).",
    "bus_window": "Published entries kept to publish again if Redis loses its data.",
    "bus_rooms_hosted": "Rooms whose log this node reads (rooms with a member of its own).",
    "nodes": "Nodes of the cluster this node knows to be alive, itself included.",
}
BUS_COUNTERS = {
    "bus_outages": "Times Redis became unreachable.",
    "bus_recoveries": "Times Redis came back.",
    "bus_data_lost": "Times Redis came back without the cluster's data.",
    "bus_published": "Entries published (one per room per hub batch).",
    "bus_republished": "Entries published again to a room that lacked them.",
    "bus_read": "Entries read from the logs of the rooms this node hosts.",
    "bus_duplicates": "Entries read again and skipped (already applied).",
    "bus_bad_entries": "Entries that did not parse, skipped.",
    "bus_nodes_lost": "Nodes this node declared lost.",
    "bus_gaps": "Gaps in a room's offsets, filled from its stream.",
    "bus_resets": "Room logs read again from their start (a new epoch, or offsets reused "
    "after a failover).",
    "bus_refusals": "Publishes a room refused because it lacked this node's earlier entries.",
    "bus_entries_lost": "Entries a room lacked that this node no longer kept (past the window).",
}


def _bus_families(snapshot: dict):
    for key, documentation in BUS_GAUGES.items():
        name = "gchat_cluster_nodes" if key == "nodes" else f"gchat_{key}"
        yield _gauge(name, documentation, snapshot[key])
    for key, documentation in BUS_COUNTERS.items():
        yield _counter(f"gchat_{key}", documentation, snapshot[key])


def make_metrics(chat_server):
    """A callable returning (content type, body) for /metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GchatCollector(chat_server))
    ProcessCollector(registry=registry)

    def scrape():
        return CONTENT_TYPE_LATEST, generate_latest(registry)

    return scrape
