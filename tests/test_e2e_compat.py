"""--compat: the seed's transcript (gopl.io ch8/chat), byte for byte, over
real sockets against the gchat console script."""


def test_seed_transcript_byte_for_byte(compat):
    """The book's two-window netcat session, replayed: every byte each client
    receives is what the seed server sends."""
    a = compat.client()
    a_addr = a.address
    a.expect(f"You are {a_addr}")
    b = compat.client()
    b_addr = b.address
    b.expect(f"You are {b_addr}")
    a.expect(f"{b_addr} has arrived")

    a.say("Hi!")
    a.expect(f"{a_addr}: Hi!")
    b.expect(f"{a_addr}: Hi!")
    b.send("Hi yourself.\r\n")  # "\r\n" accepted, "\r" dropped
    a.expect(f"{b_addr}: Hi yourself.")
    b.expect(f"{b_addr}: Hi yourself.")
    a.close()
    b.expect(f"{a_addr} has left")

    c = compat.client()
    c_addr = c.address
    c.expect(f"You are {c_addr}")
    b.expect(f"{c_addr} has arrived")
    b.say("Welcome.")
    c.expect(f"{b_addr}: Welcome.")
    b.expect(f"{b_addr}: Welcome.")
    b.close()
    c.expect(f"{b_addr} has left")

    assert (
        a.raw
        == (
            f"You are {a_addr}\n{b_addr} has arrived\n{a_addr}: Hi!\n{b_addr}: Hi yourself.\n"
        ).encode()
    )
    assert (
        b.raw
        == (
            f"You are {b_addr}\n{a_addr}: Hi!\n{b_addr}: Hi yourself.\n"
            f"{a_addr} has left\n{c_addr} has arrived\n{b_addr}: Welcome.\n"
        ).encode()
    )
    assert c.raw == (f"You are {c_addr}\n{b_addr}: Welcome.\n{b_addr} has left\n").encode()
    assert c.quiet()


def test_compat_slash_lines_are_chat_text(compat):
    """In --compat every line is chat, commands included."""
    a = compat.client()
    addr = a.address
    a.expect(f"You are {addr}")
    for line in ["/who", "/quit", "//x", "/nick bob", ""]:
        a.say(line)
        a.expect(f"{addr}: {line}")
    assert a.quiet()


def test_compat_unterminated_last_line_is_delivered(compat):
    """Like the seed's bufio.Scanner, a last line without "\\n" still counts."""
    a = compat.client()
    b = compat.client()
    a.expect("You are .*")
    a.expect(f"{b.address} has arrived")
    b.expect("You are .*")
    b.send("no newline")
    b.sock.shutdown(1)  # SHUT_WR: end of b's input
    a.expect(f"{b.address}: no newline")
    a.expect(f"{b.address} has left")


def test_compat_ignores_name_timeout_and_idle_by_default(start_gchat):
    """--compat is a drop-in for the seed, which never disconnects a quiet
    client: no name prompt, no name timeout, no default idle timeout."""
    server = start_gchat("--compat", "--name-timeout", "0.2")
    a = server.client()
    a.expect(f"You are {a.address}")
    assert a.quiet(0.6)  # well past the name timeout: still connected, nothing said
    a.say("still here")
    a.expect(f"{a.address}: still here")
