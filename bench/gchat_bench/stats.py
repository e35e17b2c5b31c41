"""Pure measuring pieces of the load generator: payloads, sequence tracking,
latency histograms.  No sockets, no gevent, no clock: tests drive them with
bytes and numbers.

Payload format.  Every chat line a simulated client sends is

    ~<run> <sender> <seq> <send_ns> xxxx...

``~`` is a marker no server adds on its own (names and addresses cannot
hold it, and it is not ``/`` so gchat never takes it for a command).  A
receiver parses a whole received chunk at once (``scan_run``: C in
``_scan.c``, with ``scan_run_py`` as its reference and fallback), so it
never splits the stream into Python lines.  ``run`` is a random number per
measured phase, so lines
from an earlier phase or another benchmark on the same server are told
apart.  ``send_ns`` is the *scheduled* send time on CLOCK_MONOTONIC, which is
the same clock in every process of this machine, so a receiver in another
process subtracts it from its own clock reading.  Using the scheduled time
rather than the time the bytes left is what keeps an open-loop benchmark
honest about coordinated omission: a stall in the generator or the server
shows up as latency.
"""

from __future__ import annotations

import os
import re
from array import array
from functools import lru_cache

from hdrh.histogram import HdrHistogram

# A data line: ~run sender seq send_ns.  The trailing space keeps a marker
# cut by a chunk boundary from matching a shorter number.
DATA_RE = re.compile(rb"~(\d+) (\d+) (\d+) (\d+) ")


def run_prefix(run: int) -> bytes:
    """The start of every data line of one phase: ``~<run> ``.

    The run id is part of the literal, so lines of other runs never match
    and the receiver does not compare it line by line.
    """
    return b"~%d " % run


@lru_cache(maxsize=16)
def _fields_after(prefix: bytes):
    return re.compile(re.escape(prefix) + rb"(\d+) (\d+) (\d+) ")


# A sync line: ~S<k>.  Sync markers order the stream (see worker.py).
SYNC_RE = re.compile(rb"~S(\d+)\b")

# Histogram range in microseconds: 1 us .. 1 hour, 3 significant figures
# (the resolution HdrHistogram's own examples use for response times).
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 3600 * 1000 * 1000
HIST_DIGITS = 3

# With 3 significant digits HdrHistogram keeps 2048 sub-buckets: values
# below HDR_EXACT are exact, above it a value of b bits is kept to its top
# HDR_BITS bits.  Receivers round the same way before counting, which
# loses nothing the histogram would have kept.
HDR_BITS = 11
HDR_EXACT = 1 << HDR_BITS

# Latency buckets of the receive path: exact below HDR_EXACT, then HDR_HALF
# buckets per power of two (a value's top HDR_BITS bits), up to
# HIST_HIGHEST_US.  A fixed array of counts instead of a dict, so the C scan
# (_scan.c) counts a delivery with one increment.
HDR_HALF = HDR_EXACT // 2
LAT_BUCKETS = HDR_EXACT + (HIST_HIGHEST_US.bit_length() - HDR_BITS) * HDR_HALF

# A field of more digits than this is no number this benchmark sent (and
# would not fit the C scan's int64): the line counts as stale.
MAX_DIGITS = 18

# Shortest payload that still holds a full marker with room for big numbers.
MIN_SIZE = 48


def latency_bucket(us: int) -> int:
    """Index in a LatencyRecorder's ``buckets`` of a latency in us (clamped)."""
    us = min(max(us, 0), HIST_HIGHEST_US)
    if us < HDR_EXACT:
        return us
    shift = us.bit_length() - HDR_BITS
    return HDR_EXACT + (shift - 1) * HDR_HALF + ((us >> shift) - HDR_HALF)


def bucket_value(index: int) -> int:
    """The (lowest) microsecond value a bucket stands for."""
    if index < HDR_EXACT:
        return index
    shift, top = divmod(index - HDR_EXACT, HDR_HALF)
    return (HDR_HALF + top) << (shift + 1)


def scan_run_py(
    buf, start: int, end: int, prefix: bytes, nxt, buckets, now_ns: int, own: int
) -> tuple:
    """Account for the data lines of one phase in ``buf[start:end]``.

    The reference for the C version in _scan.c, which the worker uses when
    it was built (``scan_run`` below); see that file for the arguments and
    the result, (matched, received, in_order, own, stale, resume, sender,
    seq).  Both must agree exactly: a test runs them side by side.
    """
    matched = received = in_order = own_count = stale = 0
    nsend = len(nxt)
    for m in _fields_after(prefix).finditer(buf, start, end):
        s, q, t = m.groups()
        matched += 1
        if max(len(s), len(q), len(t)) > MAX_DIGITS or int(s) >= nsend:
            stale += 1
            continue
        s, q = int(s), int(q)
        buckets[latency_bucket((now_ns - int(t)) // 1000)] += 1
        received += 1
        if s == own:
            own_count += 1
        if q != nxt[s]:
            return matched, received, in_order, own_count, stale, m.end(), s, q
        nxt[s] = q + 1
        in_order += 1
    return matched, received, in_order, own_count, stale, -1, -1, -1


def scan_rooms_py(
    buf,
    start: int,
    end: int,
    prefix: bytes,
    nxt,
    buckets,
    now_ns: int,
    own: int,
    rooms: int,
    room: int,
    senders: int,
) -> tuple:
    """scan_run_py for a receiver in room ``room`` of ``rooms`` (--rooms).

    Sender s (a client index) is in room ``s % rooms`` and is the
    ``s // rooms``-th sender of it, so ``nxt`` holds one slot per sender of
    one room, not one per sender of the run.  A line of this phase from a
    sender of another room reached a client it was never meant for: it is
    counted in ``leaked`` (the ninth value) and nowhere else.  ``senders``
    is the run's number of senders (a larger sender id is stale).  The
    out-of-order sender returned is the local index (``s // rooms``), the
    one ``nxt`` and SeqTracker use.  The reference for _scan.scan_rooms.
    """
    matched = received = in_order = own_count = stale = leaked = 0
    nsend = len(nxt)
    for m in _fields_after(prefix).finditer(buf, start, end):
        s, q, t = m.groups()
        matched += 1
        if max(len(s), len(q), len(t)) > MAX_DIGITS or int(s) >= senders:
            stale += 1
            continue
        s, q = int(s), int(q)
        if s % rooms != room:
            leaked += 1
            continue
        ls = s // rooms
        if ls >= nsend:
            stale += 1
            continue
        buckets[latency_bucket((now_ns - int(t)) // 1000)] += 1
        received += 1
        if s == own:
            own_count += 1
        if q != nxt[ls]:
            return matched, received, in_order, own_count, stale, m.end(), ls, q, leaked
        nxt[ls] = q + 1
        in_order += 1
    return matched, received, in_order, own_count, stale, -1, -1, -1, leaked


def census_py(buf, start: int, end: int) -> tuple:
    """(newlines, markers, sync_markers, errors) in buf[start:end]: counts of
    b"\n", b"~", b"~S" and b"error:".  The reference for _scan.census."""
    return (
        buf.count(b"\n", start, end),
        buf.count(b"~", start, end),
        buf.count(b"~S", start, end),
        buf.count(b"error:", start, end),
    )


# GCHAT_BENCH_SCAN=python forces the reference even where the C scan was
# built: to check the fallback end to end, or to compare the two.
try:
    if os.environ.get("GCHAT_BENCH_SCAN") == "python":
        raise ImportError("GCHAT_BENCH_SCAN=python")
    from gchat_bench._scan import census, scan_rooms, scan_run

    SCAN_IMPL = "C"
except ImportError:  # built without a C compiler: same results, slower
    census, scan_run, scan_rooms = census_py, scan_run_py, scan_rooms_py
    SCAN_IMPL = "python"


def new_histogram() -> HdrHistogram:
    """An empty latency histogram in microseconds."""
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


def make_payload(run: int, sender: int, seq: int, send_ns: int, size: int) -> bytes:
    """One chat line of ``size`` bytes (at least the marker) plus ``\\n``."""
    head = b"~%d %d %d %d " % (run, sender, seq, send_ns)
    # At least one byte of padding: a server that strips trailing blanks
    # must not eat the space that ends the marker.
    return head + b"x" * max(1, size - len(head)) + b"\n"


def sync_payload(k: int) -> bytes:
    """The line a client sends for sync marker ``k``."""
    return b"~S%d \n" % k


# With --rooms every room needs its own sync marker: ~S<k>.<room>.  (SYNC_RE
# still finds its k, so census and the plain path count it as a sync line.)
ROOM_SYNC_RE = re.compile(rb"~S(\d+)\.(\d+) ")


def room_sync_payload(k: int, room: int) -> bytes:
    """The line a member of room ``room`` sends for sync marker ``k``."""
    return b"~S%d.%d \n" % (k, room)


def room_name(prefix: bytes, room: int) -> bytes:
    """The name of bench room ``room`` (index, 0..rooms-1) of one run: the
    run's name prefix (random per run, so a reused server's old rooms and
    their history are not met again) and the index; at most 32 chars."""
    return b"%sr%d" % (prefix, room)


class LatencyRecorder:
    """Counts latencies in buckets of the histogram's own resolution, folded
    into an HdrHistogram.

    ``HdrHistogram.record_value`` is pure Python and costs microseconds; a
    receiver handles millions of deliveries a second.  ``buckets`` is an
    int64 array indexed by latency_bucket(us), which the C scan increments
    in place (one increment per delivery) and Python code the same way.  It
    is folded into the HdrHistogram (``record_value(v, count)``) at the end,
    so memory is fixed and the figures come from the HdrHistogram.
    """

    def __init__(self):
        self.hist = new_histogram()
        self.buckets = array("q", bytes(8 * LAT_BUCKETS))

    def fold(self) -> None:
        """Move the pending counts into the histogram."""
        buckets = self.buckets
        if any(buckets):
            rec = self.hist.record_value
            for i, n in enumerate(buckets):
                if n:
                    rec(bucket_value(i), n)
            self.buckets = array("q", bytes(8 * LAT_BUCKETS))

    def pending(self) -> int:
        """Counts not yet folded into the histogram."""
        return sum(self.buckets)

    def encoded(self) -> str:
        """Fold and return the histogram in HdrHistogram's base64 encoding."""
        self.fold()
        return self.hist.encode().decode("ascii")


def merge_encoded(encoded: list) -> HdrHistogram:
    """Add up encoded histograms (from the workers) into one."""
    h = new_histogram()
    for e in encoded:
        if e:
            h.decode_and_add(e.encode("ascii") if isinstance(e, str) else e)
    return h


def percentiles_ms(h: HdrHistogram) -> dict:
    """p50/p90/p99/p99.9/max/mean of a microsecond histogram, in ms.

    None when the histogram is empty: a run that measured nothing must not
    print zeros that look like a fast server.
    """
    if h.get_total_count() == 0:
        return {
            "p50_ms": None,
            "p90_ms": None,
            "p99_ms": None,
            "p999_ms": None,
            "max_ms": None,
            "mean_ms": None,
        }
    return {
        "p50_ms": h.get_value_at_percentile(50) / 1000.0,
        "p90_ms": h.get_value_at_percentile(90) / 1000.0,
        "p99_ms": h.get_value_at_percentile(99) / 1000.0,
        "p999_ms": h.get_value_at_percentile(99.9) / 1000.0,
        "max_ms": h.get_max_value() / 1000.0,
        "mean_ms": h.get_mean_value() / 1000.0,
    }


class SeqTracker:
    """Loss, duplication and reordering of one receiver, per sender.

    ``nxt[s]`` is the next sequence number expected from sender ``s``.  The
    common case (in order) is one compare and one store.  A jump ahead
    records the skipped numbers as missing; a missing number that arrives
    later counts as reordered, anything else below ``nxt`` as duplicated.
    Lost is what never arrived: ``sent - unique`` at the end.

    The worker inlines the in-order fast path for speed and calls
    ``out_of_order`` for the rest, so both share this bookkeeping.
    """

    __slots__ = ("nxt", "missing", "unique", "received", "duplicated", "reordered")

    def __init__(self, senders: int):
        self.nxt = array("q", bytes(8 * senders))  # int64, as the C scan needs
        self.missing: dict = {}
        self.unique = 0
        self.received = 0
        self.duplicated = 0
        self.reordered = 0

    def see(self, sender: int, seq: int) -> None:
        """Account for one delivery of ``seq`` from ``sender``."""
        self.received += 1
        if seq == self.nxt[sender]:
            self.nxt[sender] = seq + 1
            self.unique += 1
        else:
            self.out_of_order(sender, seq)

    def out_of_order(self, sender: int, seq: int) -> None:
        """The slow path of ``see`` (``received`` already counted)."""
        expected = self.nxt[sender]
        if seq > expected:
            self.missing.setdefault(sender, set()).update(range(expected, seq))
            self.nxt[sender] = seq + 1
            self.unique += 1
            return
        miss = self.missing.get(sender)
        if miss is not None and seq in miss:
            miss.discard(seq)
            self.reordered += 1
            self.unique += 1
        else:
            self.duplicated += 1

    def lost(self, sent_total: int) -> int:
        """Messages sent by all senders that this receiver never got."""
        return sent_total - self.unique
