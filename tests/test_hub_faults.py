"""The hub under stress, with the server in-process: a fault while handling
one client's event is logged with its traceback, that client is
disconnected, and the broadcaster keeps serving the rest; readers pause
while the inbox is over its bound, and nothing is lost.  The server runs
in-process (in a thread with its own gevent loop) so that the test can
plant the fault; the clients are real sockets."""

import logging
import threading

import pytest
from chat_client import named_client

from gchat.chat import Chat
from gchat.config import Config


@pytest.fixture
def server_config():
    """The Config of inprocess_server (a test may override this fixture)."""
    return Config(host="127.0.0.1", port=0)


@pytest.fixture
def inprocess_server(server_config):
    import gevent
    from gevent.event import Event

    from gchat.server import ChatServer

    ready = threading.Event()
    box = {}

    def serve():
        server = ChatServer(server_config)
        server.start()
        stop = Event()
        wake = gevent.get_hub().loop.async_()
        wake.start(stop.set)
        box.update(port=server.address[1], wake=wake)
        ready.set()
        stop.wait()
        server.stop()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield box["port"]
    box["wake"].send()  # thread-safe: wakes the server's loop to stop
    thread.join(10)


@pytest.fixture
def planted_fault(monkeypatch):
    """Chat text "boom" raises inside the chat (planted before the server
    starts, since the chat binds its command table when it is made)."""
    real_chat = Chat._chat

    def faulty_chat(self, conn, command):
        if command.text == "boom":
            raise RuntimeError("planted fault")
        real_chat(self, conn, command)

    monkeypatch.setattr(Chat, "_chat", faulty_chat)


def test_fault_in_one_clients_event_disconnects_it_alone(planted_fault, inprocess_server, caplog):
    caplog.set_level(logging.ERROR, logger="gchat")
    a = named_client("127.0.0.1", inprocess_server, "a")
    b = named_client("127.0.0.1", inprocess_server, "b")
    a.expect("b has arrived")
    b.say("boom")
    assert b.closed_after() == ["error: internal server error; disconnecting"]
    a.expect(r"b has left \(server error\)")
    a.say("still served")
    a.expect("a: still served")
    c = named_client("127.0.0.1", inprocess_server, "c")  # and new clients too
    a.expect("c has arrived")
    c.close()
    record = next(r for r in caplog.records if "error handling" in r.getMessage())
    assert record.exc_info and "planted fault" in str(record.exc_info[1])


class TestInboxBound:
    @pytest.fixture
    def server_config(self):
        # An inbox of one event: every read pauses its reader until the hub
        # has drained the inbox and resumed it.
        return Config(host="127.0.0.1", port=0, inbox_size=1, flood_rate=0)

    def test_readers_pause_at_the_inbox_bound_and_nothing_is_lost(self, inprocess_server):
        port = inprocess_server
        senders = [named_client("127.0.0.1", port, f"s{i}") for i in range(3)]
        watcher = named_client("127.0.0.1", port, "w")
        for i, sender in enumerate(senders):
            sender.send("".join(f"{i} {n}\n" for n in range(300)))
        seen = {i: [] for i in range(3)}
        while sum(map(len, seen.values())) < 900:
            line = watcher.line()
            if line.startswith("s"):
                who, _, text = line.partition(": ")
                sender, n = text.split()
                seen[int(sender)].append(int(n))
        assert all(seen[i] == list(range(300)) for i in range(3))


@pytest.fixture
def faulty_outbox(monkeypatch):
    """Handing output to one client's outbox raises (a transport's bug),
    for the client whose name is "victim", once it is named."""
    from gchat.outbox import Outbox

    real_offer = Outbox.offer
    victims = set()

    def offer(self, data, force=False):
        if self in victims:
            raise RuntimeError("planted transport fault")
        return real_offer(self, data, force)

    monkeypatch.setattr(Outbox, "offer", offer)
    return victims


def test_fault_while_delivering_to_one_client_disconnects_it_alone(
    faulty_outbox, inprocess_server, caplog
):
    import gc

    from gchat.transport.base import Connection

    caplog.set_level(logging.ERROR, logger="gchat")
    a = named_client("127.0.0.1", inprocess_server, "a")
    victim = named_client("127.0.0.1", inprocess_server, "victim")
    a.expect("victim has arrived")
    conn = next(o for o in gc.get_objects() if isinstance(o, Connection) and o.name == "victim")
    faulty_outbox.add(conn.outbox)
    a.say("this batch breaks victim's transport")
    a.expect("a: this batch breaks victim's transport")  # a still gets the batch
    a.expect(r"victim has left \(server error\)")
    victim.closed_after()
    a.say("still served")
    a.expect("a: still served")
    assert any("error delivering to" in r.getMessage() for r in caplog.records)
