/* The load generator's receive hot path in C: account for every data line
 * of the running phase in a received chunk.
 *
 * Why C: profiling a saturated generator (py-spy, bench/RESULTS.md) put 85%
 * of its CPU in the Python loop that parsed each marker line (three int()
 * calls, a dict update for the latency, a compare for the order); the
 * recv() itself was under 5%.  The generator ran out of CPU long before
 * gchat did.  This function does that loop without creating a Python
 * object per line.
 *
 * It must behave exactly like stats.scan_run_py, the pure-Python reference
 * (tests/test_bench_units.py checks the two against each other on
 * generated input), so the bench still works where no C compiler was at
 * hand: the worker then falls back to the reference.
 *
 * scan_run(buf, start, end, prefix, nxt, buckets, now_ns, own)
 *   buf      bytes-like; only buf[start:end] is looked at (whole lines)
 *   prefix   b"~<run> ", the phase's marker (stats.run_prefix)
 *   nxt      writable buffer of int64 (array('q')): next seq expected per
 *            sender; in-order lines advance it
 *   buckets  writable buffer of int64: latency counts per bucket
 *            (stats.latency_bucket gives the index of a microsecond value)
 *   now_ns   arrival time, CLOCK_MONOTONIC ns
 *   own      sender id of the receiving client (-1: none)
 * returns (matched, received, in_order, own_count, stale, resume, sender, seq)
 *   matched      lines of this phase's marker shape
 *   received     of those, the ones from a known sender (counted in buckets)
 *   in_order     received lines that were the expected next seq
 *   own_count    received lines sent by `own`
 *   stale        matched lines with an unknown sender or a number of more
 *                than MAX_DIGITS digits (not a line this benchmark sent)
 *   resume       -1 when buf[start:end] is done.  Otherwise the scan met a
 *                line out of order, (sender, seq), counted it as received
 *                but left its order to the caller (SeqTracker.out_of_order,
 *                which updates nxt) and stopped: call again from resume.
 *                Stopping keeps the lines after it judged against the nxt
 *                the slow path leaves, exactly as a line-by-line loop would.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* Must match stats.py. */
#define HDR_BITS 11
#define HDR_EXACT (1LL << HDR_BITS)
#define HDR_HALF (HDR_EXACT / 2)
#define HIST_HIGHEST_US 3600000000LL
#define MAX_DIGITS 18

/* Digits then one space, like the regex group "(\d+) ".  Returns 0: not
 * that shape; 1: parsed into *out; 2: that shape but too long for int64. */
static int
parse_field(const char **pp, const char *stop, long long *out)
{
    const char *p = *pp;
    long long v = 0;
    Py_ssize_t n = 0;
    while (p < stop && *p >= '0' && *p <= '9') {
        if (n < MAX_DIGITS)
            v = v * 10 + (*p - '0');
        p++;
        n++;
    }
    if (n == 0 || p >= stop || *p != ' ')
        return 0;
    *pp = p + 1;
    *out = v;
    return n > MAX_DIGITS ? 2 : 1;
}

/* Keep [*start, *end) inside a buffer of len bytes (callers pass offsets
 * of a bytes object, never negative ones meaning "from the end"). */
static void
clamp_range(Py_ssize_t *start, Py_ssize_t *end, Py_ssize_t len)
{
    if (*end > len)
        *end = len;
    if (*end < 0)
        *end = 0;
    if (*start < 0)
        *start = 0;
    if (*start > *end)
        *start = *end;
}

static Py_ssize_t
latency_bucket(long long us)
{
    int bits, shift;
    if (us < 0)
        us = 0;                 /* one clock: cannot happen; never drop it */
    if (us > HIST_HIGHEST_US)
        us = HIST_HIGHEST_US;   /* saturate rather than lose a sample */
    if (us < HDR_EXACT)
        return (Py_ssize_t)us;
    bits = 64 - __builtin_clzll((unsigned long long)us);
    shift = bits - HDR_BITS;
    return (Py_ssize_t)(HDR_EXACT + (shift - 1) * HDR_HALF + ((us >> shift) - HDR_HALF));
}

/* The body of scan_run and scan_rooms.  rooms == 0: scan_run (every
 * sender is a slot of nxt).  rooms > 0: the receiver is in room `room`;
 * sender s is in room s % rooms and is slot s / rooms of nxt; a line from a
 * sender of another room is counted in *leaked and nowhere else; s >=
 * senders is stale. */
static PyObject *
scan_common(PyObject *args, int with_rooms)
{
    Py_buffer buf, prefix, nxt, buckets;
    Py_ssize_t start, end, nsend, nbuckets;
    long long now_ns, own, rooms = 0, room = -1, senders = 0;
    long long matched = 0, received = 0, in_order = 0, own_count = 0, stale = 0;
    long long leaked = 0;
    long long resume = -1, ooo_sender = -1, ooo_seq = -1;
    PyObject *result = NULL;

    if (with_rooms) {
        if (!PyArg_ParseTuple(args, "y*nny*w*w*LLLLL", &buf, &start, &end, &prefix,
                              &nxt, &buckets, &now_ns, &own, &rooms, &room, &senders))
            return NULL;
    } else if (!PyArg_ParseTuple(args, "y*nny*w*w*LL", &buf, &start, &end, &prefix,
                                 &nxt, &buckets, &now_ns, &own))
        return NULL;
    clamp_range(&start, &end, buf.len);
    if (nxt.itemsize != 8 || buckets.itemsize != 8 || prefix.len == 0) {
        PyErr_SetString(PyExc_ValueError,
                        "scan_run: nxt and buckets must be int64 buffers, prefix non-empty");
        goto done;
    }
    if (with_rooms && rooms < 1) {
        PyErr_SetString(PyExc_ValueError, "scan_rooms: rooms must be at least 1");
        goto done;
    }
    nsend = nxt.len / 8;
    nbuckets = buckets.len / 8;
    {
        const char *base = (const char *)buf.buf;
        const char *p = base + start, *stop = base + end;
        long long *next_seq = (long long *)nxt.buf;
        long long *counts = (long long *)buckets.buf;
        while (p < stop) {
            const char *m = memmem(p, (size_t)(stop - p), prefix.buf, (size_t)prefix.len);
            const char *q;
            long long s, seq, t, slot;
            int rs, rq, rt;
            Py_ssize_t b;
            if (m == NULL)
                break;
            q = m + prefix.len;
            if (!(rs = parse_field(&q, stop, &s)) || !(rq = parse_field(&q, stop, &seq))
                    || !(rt = parse_field(&q, stop, &t))) {
                p = m + 1;      /* not a data line here: search on */
                continue;
            }
            p = q;
            matched++;
            if (rs == 2 || rq == 2 || rt == 2 || s >= (with_rooms ? senders : nsend)) {
                stale++;
                continue;
            }
            slot = s;
            if (with_rooms) {
                if (s % rooms != room) {
                    leaked++;
                    continue;
                }
                slot = s / rooms;
                if (slot >= nsend) {
                    stale++;
                    continue;
                }
            }
            b = latency_bucket(now_ns - t >= 0 ? (now_ns - t) / 1000 : -1);
            if (b < nbuckets)
                counts[b]++;
            received++;
            if (s == own)
                own_count++;
            if (seq == next_seq[slot]) {
                next_seq[slot] = seq + 1;
                in_order++;
            } else {
                resume = (long long)(p - base);
                ooo_sender = slot;
                ooo_seq = seq;
                break;
            }
        }
    }
    if (with_rooms)
        result = Py_BuildValue("(LLLLLLLLL)", matched, received, in_order, own_count, stale,
                               resume, ooo_sender, ooo_seq, leaked);
    else
        result = Py_BuildValue("(LLLLLLLL)", matched, received, in_order, own_count, stale,
                               resume, ooo_sender, ooo_seq);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&nxt);
    PyBuffer_Release(&buckets);
    return result;
}

static PyObject *
scan_run(PyObject *self, PyObject *args)
{
    (void)self;
    return scan_common(args, 0);
}

/* scan_rooms(buf, start, end, prefix, nxt, buckets, now_ns, own, rooms,
 *            room, senders)
 *   -> (matched, received, in_order, own_count, stale, resume, slot, seq, leaked)
 * scan_run for a receiver of room `room` (gchat-bench --rooms): nxt has one
 * slot per sender of that room (sender s is slot s / rooms), the sender
 * returned out of order is that slot, and `leaked` counts this phase's
 * lines from senders of other rooms.  stats.scan_rooms_py is the reference. */
static PyObject *
scan_rooms(PyObject *self, PyObject *args)
{
    (void)self;
    return scan_common(args, 1);
}

/* census(buf, start, end) -> (newlines, markers, sync_markers, errors)
 *
 * Counts in buf[start:end]: "\n", "~", "~S" and (non-overlapping)
 * "error:", as bytes.count would (stats.census_py is the reference).  One
 * call instead of four bytes methods: after the scan moved to C, py-spy
 * found those four passes (bytes.count of one byte is a plain loop, and
 * find("~S") checks every other byte of a buffer full of "~") taking half
 * of a saturated worker. */
static PyObject *
census(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t start, end;
    long long newlines = 0, markers = 0, syncs = 0, errors = 0;
    const char *base, *p, *stop;
    (void)self;

    if (!PyArg_ParseTuple(args, "y*nn", &buf, &start, &end))
        return NULL;
    clamp_range(&start, &end, buf.len);
    base = (const char *)buf.buf;
    stop = base + end;
    for (p = base + start; p < stop; p++) {
        p = memchr(p, '\n', (size_t)(stop - p));
        if (p == NULL)
            break;
        newlines++;
    }
    for (p = base + start; p < stop; p++) {
        p = memchr(p, '~', (size_t)(stop - p));
        if (p == NULL)
            break;
        markers++;
        if (p + 1 < stop && p[1] == 'S')
            syncs++;
    }
    for (p = base + start; p < stop; p += 6) {
        p = memmem(p, (size_t)(stop - p), "error:", 6);
        if (p == NULL)
            break;
        errors++;
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(LLLL)", newlines, markers, syncs, errors);
}

static PyMethodDef scan_methods[] = {
    {"census", census, METH_VARARGS,
     "census(buf, start, end) -> (newlines, markers, sync_markers, errors); see _scan.c"},
    {"scan_run", scan_run, METH_VARARGS,
     "scan_run(buf, start, end, prefix, nxt, buckets, now_ns, own) -> "
     "(matched, received, in_order, own, stale, out_of_order); see _scan.c"},
    {"scan_rooms", scan_rooms, METH_VARARGS,
     "scan_rooms(buf, start, end, prefix, nxt, buckets, now_ns, own, rooms, room, senders) "
     "-> scan_run's tuple plus leaked; see _scan.c"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT, "_scan",
    "C receive path of the gchat-bench load generator (see stats.scan_run_py).",
    -1, scan_methods
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&scan_module);
}
