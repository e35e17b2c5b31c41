"""Drive the Chat without sockets: fake connections, the real Chat, Room
and Fanout, and the bytes each connection would be sent (as the hub
would hand them to its Outbox)."""

from gchat.chat import Chat
from gchat.config import Config


class Conn:
    def __init__(self, who):
        self.who = who
        self.name = None
        self.room = None

    def __repr__(self):
        return f"Conn({self.who})"


class Harness:
    def __init__(self, **config):
        self.now = 100.0
        self.chat = Chat(Config(**config), clock=lambda: self.now)
        self.received = {}
        self.writes = {}  # conn -> how many pieces it was handed (one per flush)

    def connect(self, who):
        conn = Conn(who)
        self.chat.arrive(conn)
        return conn

    def say(self, conn, *lines):
        self.chat.lines(conn, [line.encode() if isinstance(line, str) else line for line in lines])

    def flush(self):
        def deliver(conn, data):
            self.received[conn] = self.received.get(conn, b"") + data
            self.writes[conn] = self.writes.get(conn, 0) + 1

        self.chat.end_batch(self.now)  # as the hub does before each flush
        self.chat.flush(deliver)
        departed, self.chat.departures = self.chat.departures, []
        return departed

    def take(self, conn) -> list:
        """Lines conn received since the last take."""
        self.flush()
        data = self.received.pop(conn, b"")
        return data.decode().splitlines()


def named(h, name):
    conn = h.connect(name + "-addr")
    h.say(conn, name)
    h.take(conn)
    return conn
