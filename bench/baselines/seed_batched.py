"""The seed port with one change: each writer sends its whole backlog at once.

Same as ``seed_port`` (one broadcaster, one gevent Queue and one writer
greenlet per client, N queue puts per message), except that a writer that
wakes up takes *every* message waiting in its queue and sends them with one
``sendall``.  Under load a client then costs one send per wake-up instead
of one per message.  Against ``seed_port`` it shows what write batching
alone buys; against gchat, what the rest of gchat's design buys (no
per-client queue put and greenlet switch per message, rendering once,
bounded output).
"""

import sys

from gchat_bench.baselines import seed_port


class BatchedSeedServer(seed_port.SeedServer):
    """SeedServer whose writers coalesce their queue into one sendall."""

    @staticmethod
    def _write(sock, q):
        try:
            for msg in q:
                if msg is None:
                    return
                batch = [msg, b""]
                while not q.empty():
                    nxt = q.get_nowait()
                    if nxt is None:
                        sock.sendall(b"\n".join(batch))
                        return
                    batch[-1:] = [nxt, b""]
                sock.sendall(b"\n".join(batch))
        except OSError:
            for msg in q:
                if msg is None:
                    break


def main(argv=None):
    """Run the batched seed server until SIGTERM or SIGINT; exit 0."""
    return seed_port.main(argv, server_class=BatchedSeedServer)


if __name__ == "__main__":
    sys.exit(main())
