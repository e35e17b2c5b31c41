"""The cluster soak's checks (cluster_soak.py): what each client received,
against what it was owed.  Pure functions over logs of (sender, seq),
sender a name, in arrival order: no sockets, no clock, so the tests can
feed them synthetic logs and show that each check can fail.

- owed: which lines of one sender every stayer must get, given what
  reached anyone and how many refusals ("not sent") the sender got;
- verify: per stayer, lines lost, duplicated, out of order or unexpected,
  and whether every stayer got the room's lines in the same order;
- check_session: a churner's session, which came and went mid-stream;
- warnings: node counters not back at rest after the drain.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

PROBLEMS_SHOWN = 20

# A chat line of the soak: (sender's name, its sequence number).
Key = tuple[str, int]


def owed(
    sent: int, refusals: int, delivered: Iterable[int], settled: bool
) -> tuple[set[int], set[int], int]:
    """What every stayer must get of one sender's lines 0..sent-1.

    delivered: the seqs that reached someone (a stayer, or the sender
    itself: a line that came back reached the bus, so everyone is owed it);
    refusals: how many "not sent" errors the sender got; settled: every
    line of the sender came back to it or was refused (else its lines after
    the last that came back are uncertain: the sender went before learning
    their fate, or its node died holding them).

    A refusal does not say which line it refused, and need not: the lines
    that reached nobody are the refused ones, as many as there were
    refusals; any more are lost (owed to everyone, missing everywhere).
    Returns (owed seqs, seqs taken as refused, refusals left unexplained:
    a refused line that was delivered after all, or a refusal of nothing).
    """
    delivered = {q for q in delivered if q < sent}
    top = max(delivered, default=-1)
    checkable = range(sent) if settled else range(top + 1)
    absent = sorted(set(checkable) - delivered)
    refused = set(absent[len(absent) - min(refusals, len(absent)) :]) if refusals else set()
    unsure = 0 if settled else sent - (top + 1)
    unexplained = max(0, refusals - len(absent) - unsure)
    return delivered | (set(absent) - refused), refused, unexplained


def verify(
    received: dict[str, Iterable[Key]], owed_by: dict[str, set[int]], limit: int = PROBLEMS_SHOWN
) -> dict:
    """Check what the stayers received.

    received: {receiver: iterable of (sender, seq) in arrival order};
    owed_by: {sender: set of seqs every receiver must get exactly once}.
    Per receiver and sender: lost (owed, never received), duplicated
    (receptions past the first), out_of_order (a first reception after a
    higher seq of the same sender), unexpected (received, not owed).
    Across receivers: order_mismatches, the receivers whose relative order
    of the lines they share with the first receiver (the reference) is not
    the reference's.  Also returns the reference's
    index {(sender, seq): position} for check_session.
    """
    res = {
        "expected": 0,
        "received": 0,
        "lost": 0,
        "duplicated": 0,
        "out_of_order": 0,
        "unexpected": 0,
        "order_mismatches": 0,
    }
    problems: list = []

    def problem(text):
        if len(problems) < limit:
            problems.append(text)

    ref_index = None
    ref_name = None
    owed_total = sum(len(s) for s in owed_by.values())
    for receiver, lines in received.items():
        seen: dict = {}  # sender -> set of seqs
        top: dict = {}  # sender -> highest seq received
        order = []  # first receptions, in arrival order
        count = 0
        for key in lines:
            count += 1
            sender, seq = key
            got = seen.get(sender)
            if got is None:
                got = seen[sender] = set()
            if seq in got:
                res["duplicated"] += 1
                problem("duplicated: %s got %s#%d again" % (receiver, sender, seq))
                continue
            got.add(seq)
            order.append(key)
            if seq < top.get(sender, -1):
                res["out_of_order"] += 1
                problem(
                    "out of order: %s got %s#%d after %s#%d"
                    % (receiver, sender, seq, sender, top[sender])
                )
            else:
                top[sender] = seq
            if seq not in owed_by.get(sender, ()):
                res["unexpected"] += 1
                problem("unexpected: %s got %s#%d (not owed)" % (receiver, sender, seq))
        res["received"] += count
        res["expected"] += owed_total
        for sender, want in owed_by.items():
            missing = want - seen.get(sender, set())
            if missing:
                res["lost"] += len(missing)
                problem("lost: %s never got %s#%s" % (receiver, sender, _runs(missing)))
        if ref_index is None:
            ref_index = {key: i for i, key in enumerate(order)}
            ref_name = receiver
            continue
        where = first_inversion(order, ref_index)
        if where is not None:
            res["order_mismatches"] += 1
            a, b = where
            problem(
                "order: %s got %s#%d before %s#%d, %s the other way"
                % (receiver, a[0], a[1], b[0], b[1], ref_name)
            )
    res["problems"] = problems
    res["reference"] = ref_index or {}
    return res


def first_inversion(order: Iterable[Key], ref_index: dict[Key, int]) -> Optional[tuple[Key, Key]]:
    """The first pair (a, b) of order, a before b, that ref_index has the
    other way round (lines ref_index does not hold are skipped); None when
    order agrees with it."""
    best = -1
    best_key = None
    for key in order:
        i = ref_index.get(key)
        if i is None:
            continue
        if i < best:
            return best_key, key
        best, best_key = i, key
    return None


def check_session(
    lines: Iterable[Key], owed_by: dict[str, set[int]], ref_index: dict[Key, int]
) -> dict[str, int]:
    """What one churner session saw: it came in and went mid-stream, so per
    sender it may miss the beginning and the end, never anything between
    its first and last line of that sender that is owed.  Also no
    duplicates, each sender in order, and the stayers' relative order."""
    res = {"gaps": 0, "duplicated": 0, "out_of_order": 0, "order": 0}
    seen: dict = {}
    order = []
    for key in lines:
        sender, seq = key
        got = seen.setdefault(sender, [])
        if seq in got:
            res["duplicated"] += 1
            continue
        if got and seq < got[-1]:
            res["out_of_order"] += 1
        got.append(seq)
        order.append(key)
    for sender, got in seen.items():
        lo, hi = min(got), max(got)
        want = {q for q in owed_by.get(sender, ()) if lo < q < hi}
        res["gaps"] += len(want - set(got))
    if first_inversion(order, ref_index) is not None:
        res["order"] += 1
    return res


def _runs(seqs: Iterable[int]) -> str:
    """{1,2,3,7} -> '1-3,7' (at most a few runs)."""
    out = []
    for q in sorted(seqs):
        if out and out[-1][1] == q - 1:
            out[-1][1] = q
        else:
            out.append([q, q])
    text = ",".join("%d" % a if a == b else "%d-%d" % (a, b) for a, b in out[:6])
    return text + (",..." if len(out) > 6 else "")


def warnings(node_stats: dict[str, dict]) -> list[str]:
    """Node counters that should be back at rest once the soak has drained
    (reported, not failed on: they are not lines lost)."""
    out = []
    for node, stats in node_stats.items():
        for key in ("bus_held_lines", "bus_pending"):
            if stats.get(key, 0) != 0:
                out.append("%s: %s=%s after the drain (expected 0)" % (node, key, stats[key]))
    return out
