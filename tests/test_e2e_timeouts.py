"""Exercise 8.13: idle clients and clients that never give a name are
disconnected with a line saying why (short timeouts, real sockets)."""


def test_idle_client_is_told_and_disconnected(start_gchat):
    server = start_gchat("--idle-timeout", "0.6")
    sleepy = server.named("sleepy")
    chatty = server.named("chatty")
    sleepy.expect("chatty has arrived")
    # chatty keeps talking (which keeps it from idling) until it sees
    # sleepy leave; sleepy says nothing at all.
    for _ in range(100):
        chatty.say("ping")
        line = chatty.expect(r"chatty: ping|sleepy has left.*")
        if line.startswith("sleepy has left"):
            break
        chatty.quiet(0.1)  # pace the pings; not a synchronisation
    assert line == "sleepy has left (idle timeout)"
    lines = sleepy.closed_after()
    assert lines[-1] == "error: idle for 0.6 s; disconnecting"
    assert set(lines[:-1]) <= {"chatty: ping"}


def test_idle_timeout_zero_turns_it_off(start_gchat):
    server = start_gchat("--idle-timeout", "0")
    a = server.named("a")
    assert a.quiet(1.0)
    a.say("still here")
    a.expect("a: still here")


def test_nameless_client_is_disconnected_after_name_timeout(start_gchat):
    server = start_gchat("--name-timeout", "0.5")
    watcher = server.named("watcher")  # the named client is not affected
    nameless = server.client()
    assert "name" in nameless.line().lower()
    assert nameless.closed_after() == ["error: no name given within 0.5 s; disconnecting"]
    watcher.say("ok")
    watcher.expect("watcher: ok")  # nobody announced the nameless client
