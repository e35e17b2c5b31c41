"""The seed chat server of gopl.io ch8/chat, ported straight to gevent.

This is the bar gchat must clear.  It keeps the seed's shape on purpose,
including its costs, so that ``gchat-bench compare`` measures what gchat's
design buys:

- one broadcaster greenlet that owns the client set (the seed's
  ``broadcaster`` goroutine); events reach it through one gevent Queue
  (the seed's three channels ``entering``, ``leaving`` and ``messages``
  merged into one, which keeps their order);
- per client: a reader (the connection handler), one gevent Queue and one
  writer greenlet (the seed's ``clientWriter``);
- the broadcaster puts every message into every client's queue (N puts and
  N greenlet switches per message), and the writer does one ``sendall`` per
  message (the seed's ``fmt.Fprintln(conn, msg)``).

The client queues are unbounded: the seed's unbuffered channels would stall
the whole broadcaster on one slow client, a gevent port that blocks on a
bounded queue would do the same, and the straight port to a gevent Queue is
the unbounded one.  A client that never reads therefore makes this server
grow without limit; that is one of the things gchat fixes.

Protocol (byte for byte the seed's): a new client gets ``You are ADDR``;
the others get ``ADDR has arrived``; every line a client sends goes to all
clients, the sender included, as ``ADDR: text``; on disconnect the others
get ``ADDR has left``.  ADDR is the client's address as the server sees it
(``127.0.0.1:54321``; ``[::1]:54321`` for IPv6, like Go's net package).
"""

import argparse
import signal
import socket
import sys

import gevent
from gevent.queue import Queue
from gevent.server import StreamServer

# bufio.Scanner's default maximum token size: the seed drops a client whose
# line is longer than this (Scan returns false), and so does this port.
MAX_LINE = 64 * 1024


def format_addr(address):
    """Render a peer address as Go's net.Conn.RemoteAddr().String() does."""
    host, port = address[0], address[1]
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


class SeedServer:
    """The broadcaster and the per-connection handler of the seed."""

    def __init__(self):
        self.events = Queue()  # ("enter"|"leave", q) or ("msg", bytes)
        self.clients = set()  # owned by the broadcaster greenlet only
        self.broadcaster = gevent.spawn(self._broadcast)

    def _broadcast(self):
        clients = self.clients
        for kind, item in self.events:
            if kind == "msg":
                for q in clients:
                    q.put(item)
            elif kind == "enter":
                clients.add(item)
            else:  # leave
                clients.discard(item)
                item.put(None)  # the seed closes the channel: writer ends

    def handle(self, sock, address):
        """Serve one client; the socket closes when this returns."""
        # Go's net package turns Nagle off on every TCP connection, so the
        # seed writes each line at once; without this a port would add
        # Nagle + delayed-ACK stalls (~40 ms) that the seed never had.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        q = Queue()
        writer = gevent.spawn(self._write, sock, q)
        who = format_addr(address).encode()
        q.put(b"You are " + who)
        self.events.put(("msg", who + b" has arrived"))
        self.events.put(("enter", q))
        rfile = sock.makefile("rb")
        try:
            while True:
                line = rfile.readline(MAX_LINE + 1)
                if not line:
                    break
                if line.endswith(b"\n"):
                    line = line[:-1]
                    if line.endswith(b"\r"):  # ScanLines drops a trailing \r
                        line = line[:-1]
                elif len(line) > MAX_LINE:
                    break  # bufio.ErrTooLong ends the loop
                self.events.put(("msg", who + b": " + line))
        except OSError:
            pass
        finally:
            rfile.close()
            self.events.put(("leave", q))
            self.events.put(("msg", who + b" has left"))
            writer.join()

    @staticmethod
    def _write(sock, q):
        # One sendall per message, as fmt.Fprintln does one Write per message.
        try:
            for msg in q:
                if msg is None:
                    break
                sock.sendall(msg + b"\n")
        except OSError:
            # The seed ignores write errors and keeps draining its channel;
            # draining here keeps the broadcaster's puts cheap after a reset.
            for msg in q:
                if msg is None:
                    break


def main(argv=None, server_class=SeedServer):
    """Run the seed server until SIGTERM or SIGINT; exit 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    ap.add_argument(
        "--compat",
        action="store_true",
        help="accepted for symmetry with gchat; this server only speaks the seed protocol",
    )
    args = ap.parse_args(argv)

    seed = server_class()
    # The listen backlog matters under a connect storm: the seed's
    # net.Listen uses the kernel's somaxconn, so ask for as much.
    server = StreamServer((args.host, args.port), seed.handle, backlog=4096)
    server.start()
    host, port = server.address[0], server.address[1]
    print("listening on %s:%d" % (host, port), file=sys.stderr, flush=True)

    def stop():
        server.stop(timeout=1)

    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
