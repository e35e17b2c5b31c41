"""A real netcat as a client: what README's transcript shows."""

import shutil
import subprocess
import threading
import time


def test_netcat_user_chats_with_a_socket_user(gchat):
    nc = shutil.which("nc")
    assert nc, "netcat is required (apt-get install netcat-openbsd); .ci/run installs it"
    other = gchat.named("sock")
    proc = subprocess.Popen(
        [nc, "127.0.0.1", str(gchat.port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen = []
    threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True).start()
    try:
        proc.stdin.write(b"ncuser\nhello from netcat\n")
        proc.stdin.flush()
        other.expect("ncuser has arrived")
        other.expect("ncuser: hello from netcat")
        other.say("hello back")
        deadline = time.monotonic() + 10
        while b"sock: hello back\n" not in seen and time.monotonic() < deadline:
            time.sleep(0.02)  # polling a pipe another thread fills; bounded
        assert seen[:4] == [
            b"Welcome to gchat. What is your name?\n",
            b"You are ncuser\n",
            b"Also here (1): sock\n",
            b"ncuser: hello from netcat\n",
        ]
        assert b"sock: hello back\n" in seen
    finally:
        proc.kill()
        proc.wait()
    other.expect("ncuser has left.*", skip=True)
