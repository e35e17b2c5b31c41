"""A fault while handling one client's event is logged with its traceback,
that client is disconnected, and the broadcaster keeps serving the rest.
The server runs in-process (in a thread with its own gevent loop) so that
the test can plant the fault; the clients are real sockets."""
import logging
import threading

import pytest

from chat_client import named_client
from gchat.config import Config
from gchat.room import Room


@pytest.fixture
def inprocess_server():
    import gevent
    from gevent.event import Event

    from gchat.server import ChatServer

    ready = threading.Event()
    box = {}

    def serve():
        server = ChatServer(Config(host="127.0.0.1", port=0))
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
    """Chat text "boom" raises inside the room (planted before the server
    starts, since the room binds its command table when it is made)."""
    real_chat = Room._chat

    def faulty_chat(self, conn, command):
        if command.text == "boom":
            raise RuntimeError("planted fault")
        real_chat(self, conn, command)

    monkeypatch.setattr(Room, "_chat", faulty_chat)


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
