"""The chat page (gchat/static/) in a real browser: headless Chromium from
Debian (`apt-get install chromium`) driven by Playwright for Python (`pip
install playwright`; no `playwright install`: the browser is the system's).
Each test runs gchat with --http on free ports; pages and a real `nc` chat
in the same rooms.  Every wait has a deadline (Playwright's expect, or a
condition variable with a timeout); nothing sleeps to synchronise."""

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import playwright.sync_api as playwright_sync  # a hard requirement: .ci/run installs it
import pytest

from gchat_bench.processes import free_port

expect = playwright_sync.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # we may run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no outbound calls on a closed network
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 10_000
# The README's picture is made by this test: GCHAT_SCREENSHOT=docs/screenshot.png
# writes it there; otherwise it goes to the test's temporary folder, so that a
# test run does not change the checkout.
SCREENSHOT_ENV = "GCHAT_SCREENSHOT"

expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """One browser tab on the chat page, with the problems it ran into."""

    def __init__(self, browser, server, viewport=None, path="/"):
        self.context = browser.new_context(viewport=viewport or {"width": 1000, "height": 640})
        self.page = self.context.new_page()
        self.dialogs = []
        self.errors = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.goto(f"http://127.0.0.1:{server.http_port}{path}")

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def sign_in(self, name):
        self.page.locator("#name").fill(name)
        self.page.locator("#name-submit").click()

    def named(self, name):
        self.sign_in(name)
        expect(self.page.locator("#me")).to_have_text(name)
        expect(self.page.locator("#room")).to_have_text("#lobby")
        expect(self.page.locator("#name-overlay")).to_be_hidden()
        return self

    def say(self, text):
        box = self.page.locator("#line")
        expect(box).to_be_enabled()
        box.fill(text)
        box.press("Enter")
        expect(box).to_have_value("")

    def lines(self, kind=None, text=None):
        selector = "#log .line" + (f'[data-kind="{kind}"]' if kind else "")
        found = self.page.locator(selector)
        if text is not None:
            found = found.filter(has_text=re.compile("^" + re.escape(text) + "$"))
        return found

    def sees(self, kind, text):
        """Waits until exactly one line of that kind reads text."""
        expect(self.lines(kind, text)).to_have_count(1)

    def sees_like(self, kind, pattern):
        """Waits until exactly one line of that kind matches pattern (fully)."""
        found = self.page.locator(f'#log .line[data-kind="{kind}"]')
        expect(found.filter(has_text=re.compile(f"^(?:{pattern})$"))).to_have_count(1)

    def roster(self, *names):
        expect(self.page.locator("#roster li")).to_have_text(list(names))

    def close(self):
        self.context.close()
        assert not self.errors, f"script errors in the page: {self.errors}"


class Netcat:
    """The real `nc` as a client; what it prints is read by a thread."""

    def __init__(self, port):
        nc = shutil.which("nc")
        assert nc, "netcat is required (apt-get install netcat-openbsd)"
        self.proc = subprocess.Popen(
            [nc, "127.0.0.1", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.received = []
        self.read_upto = 0
        self.eof = False
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.received.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def say(self, *lines):
        self.proc.stdin.write("".join(line + "\n" for line in lines).encode())
        self.proc.stdin.flush()

    def expect(self, pattern, timeout=WAIT_MS / 1000):
        """Skips to the next line matching pattern (a regex, fully)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                while self.read_upto < len(self.received):
                    line = self.received[self.read_upto]
                    self.read_upto += 1
                    if re.fullmatch(pattern, line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.eof:
                    raise AssertionError(
                        f"nc: no line matching {pattern!r}; got {self.received[-20:]!r}"
                    )
                self.cond.wait(remaining)

    def named(self, name):
        self.expect(r".*What is your name\?")
        self.say(name)
        self.expect(f"You are {re.escape(name)}")
        return self

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def web(start_gchat, browser):
    """web(*gchat_args) -> (server, open_page, netcat): gchat with --http on
    a free port; everything opened is closed after the test."""
    opened = []

    def start(*args):
        server = start_gchat("--http", "0", *args)
        assert server.http_port, server.stderr_text()

        def open_page(name=None, **kw):
            page = Page(browser, server, **kw)
            opened.append(page)
            return page.named(name) if name else page

        def netcat(name=None):
            nc = Netcat(server.port)
            opened.append(nc)
            return nc.named(name) if name else nc

        return server, open_page, netcat

    yield start
    problems = []
    for thing in reversed(opened):
        try:
            thing.close()
        except AssertionError as exc:  # a page's script error; close the rest first
            problems.append(str(exc))
    assert not problems, problems


# ---------------------------------------------------------------------------


def test_two_pages_and_netcat_chat_in_one_room(web):
    server, open_page, netcat = web()
    alice = open_page("alice")
    alice.sees("system", "You are alice")
    alice.sees("system", "Nobody else is here.")
    bob = open_page("bob")
    bob.sees("system", "Also here (1): alice")
    alice.sees("arrival", "bob has arrived")

    carol = netcat("carol")
    carol.expect(r"Also here \(2\): (alice, bob|bob, alice)")
    alice.sees("arrival", "carol has arrived")
    bob.sees("arrival", "carol has arrived")

    alice.say("hello from the browser")
    for page in (alice, bob):
        page.sees("chat", "alice: hello from the browser")
    carol.expect("alice: hello from the browser")

    carol.say("hello from netcat")
    for page in (alice, bob):
        page.sees("chat", "carol: hello from netcat")

    bob.say("/me waves")
    alice.sees("me", "* bob waves")
    carol.expect(r"\* bob waves")

    bob.say("/msg carol psst")
    bob.sees("private", "bob (private to carol): psst")
    carol.expect(r"bob \(private\): psst")
    carol.say("/msg alice hi alice")
    alice.sees("private", "carol (private): hi alice")
    expect(bob.lines("private")).to_have_count(1)

    alice.say("/bogus")
    alice.sees("error", "error: unknown command /bogus (try /help)")

    alice.say("/rooms")
    alice.sees("system", "Rooms (1): #lobby (3, you are here)")

    # "//" is chat with one "/" removed, as in nc
    carol.say("//not a command")
    bob.sees("chat", "carol: /not a command")

    # UTF-8 both ways; control characters arrive as U+FFFD
    carol.say("héllo 😀 — \x1b[31mred")
    alice.sees("chat", "carol: héllo 😀 — \ufffd[31mred")
    alice.say("ünïcödé ✓")
    carol.expect("alice: ünïcödé ✓")

    carol.say("/quit lunch")
    carol.expect("Goodbye.")
    for page in (alice, bob):
        page.sees("departure", "carol has left (lunch)")

    bob.close()  # the tab goes: a clean close or a lost connection, either will do
    alice.sees_like("departure", r"bob has left( \(connection lost\))?")
    # the page's own /who answers are not shown; a typed one is
    expect(alice.lines(text="Here now (1): alice")).to_have_count(0)
    alice.say("/who")
    alice.sees("system", "Here now (1): alice")


KINDS = [
    ("alice: hi", "chat"),
    ("alice: has arrived", "chat"),
    ("Zoë_2.x-y: error: not really", "chat"),
    ("bob: /me is chat", "chat"),
    ("* bob waves", "me"),
    ("* bob has arrived", "me"),
    ("bob has arrived", "arrival"),
    ("a, b, c have arrived", "arrival"),
    ("a, b and 3 more have arrived", "arrival"),
    ("bob has left", "departure"),
    ("bob has left (lunch, then: home)", "departure"),
    ("bob has left (joined #games)", "departure"),
    ("a (joined #x), b, c (idle timeout) have left", "departure"),
    ("a, b (send queue exceeded) and 7 more have left", "departure"),
    ("alice (private): psst", "private"),
    ("alice (private to bob): psst", "private"),
    ("error: no such user: bob", "error"),
    ("error: the name bob is taken", "error"),
    ("Welcome to gchat. What is your name?", "system"),
    ("What is your name?", "system"),
    ("You are bob", "system"),
    ("You are now in #games", "system"),
    ("Nobody else is here.", "system"),
    ("Also here (2): a, b", "system"),
    ("Also here (60): a, b, and 58 more (/who lists all)", "system"),
    ("Here now (1): bob", "system"),
    ("--- last 2 lines of #games ---", "system"),
    ("--- end of history ---", "system"),
    ("Rooms (2): #games (2, you are here), #lobby (0)", "system"),
    ("bob is now known as robert", "system"),
    ("Commands:", "system"),
    ("  /who               who is in your room", "system"),
    ("stats: clients=2 rooms=1 fds=9", "system"),
    ("Goodbye.", "system"),
    ("Server shutting down. Goodbye.", "system"),
]


def test_every_kind_of_line_is_classified(web):
    """The page's classifier (window.gchat.classify) on every line shape
    of README's protocol, data-kind's source."""
    server, open_page, netcat = web()
    page = open_page().page
    got = page.evaluate(
        "lines => lines.map(l => window.gchat.classify(l))", [line for line, _ in KINDS]
    )
    assert list(zip([line for line, _ in KINDS], got)) == KINDS


def test_markup_from_netcat_stays_text(web):
    server, open_page, netcat = web()
    alice = open_page("alice")
    mallory = netcat("mallory")
    alice.sees("arrival", "mallory has arrived")
    payloads = [
        "<img src=x onerror=alert(1)>",
        "<script>alert(2)</script>",
        "<b onmouseover=alert(3)>bold</b> &amp; &lt;",
    ]
    for payload in payloads:
        mallory.say(payload)
    mallory.say("/me <img src=y onerror=alert(4)>")
    mallory.say("/msg alice <iframe src=javascript:alert(5)>")
    mallory.say("/quit <img src=z onerror=alert(6)>")

    for payload in payloads:
        alice.sees("chat", f"mallory: {payload}")
    alice.sees("me", "* mallory <img src=y onerror=alert(4)>")
    alice.sees("private", "mallory (private): <iframe src=javascript:alert(5)>")
    alice.sees("departure", "mallory has left (<img src=z onerror=alert(6)>)")
    # a failed image load would fire onerror after its line was shown: one
    # more round trip through the server before looking for the dialogs
    alice.say("after the payloads")
    alice.sees("chat", "alice: after the payloads")

    page = alice.page
    expect(alice.lines("chat", "mallory: <img src=x onerror=alert(1)>")).to_be_visible()
    assert page.locator("#log img, #log script, #log iframe, #log b").count() == 0
    assert page.locator("img").count() == 0
    assert alice.dialogs == []
    first = alice.lines("chat", "mallory: <img src=x onerror=alert(1)>")
    assert first.evaluate("e => e.textContent") == "mallory: <img src=x onerror=alert(1)>"


def test_roster_follows_arrivals_departures_and_nicks(web):
    server, open_page, netcat = web()
    carol = netcat("carol")
    alice = open_page()
    # a taken name: the error is shown and the question asked again
    alice.sign_in("Carol")
    expect(alice.page.locator("#name-error")).to_contain_text("taken")
    expect(alice.page.locator("#name-overlay")).to_be_visible()
    alice.named("alice")
    alice.roster("alice", "carol")  # from the roster line, and /who
    expect(alice.page.locator("#roster li.self")).to_have_text("alice")

    bob = open_page("bob")
    alice.roster("alice", "bob", "carol")
    bob.roster("alice", "bob", "carol")
    expect(alice.page.locator("#roster-count")).to_have_text("3")

    carol.say("/nick zed")
    alice.sees("system", "carol is now known as zed")
    alice.roster("alice", "bob", "zed")
    bob.roster("alice", "bob", "zed")

    bob.say("/nick bobby")
    bob.sees("system", "bob is now known as bobby")
    bob.roster("alice", "bobby", "zed")
    expect(bob.page.locator("#me")).to_have_text("bobby")
    expect(bob.page.locator("#roster li.self")).to_have_text("bobby")
    alice.roster("alice", "bobby", "zed")

    carol.say("/quit")
    carol.expect("Goodbye.")
    alice.sees("departure", "zed has left")
    alice.roster("alice", "bobby")
    bob.roster("alice", "bobby")

    bob.close()
    alice.roster("alice")
    expect(alice.page.locator("#roster-count")).to_have_text("1")

    # /quit from the page: Goodbye, and no reconnecting
    alice.say("/quit bye")
    alice.sees("system", "Goodbye.")
    expect(alice.page.locator("#status")).to_have_text("disconnected")
    expect(alice.page.locator("#gone")).to_be_visible()
    assert alice.page.evaluate("window.gchat.state.reconnectTimer") is None


def test_join_switches_rooms(web):
    server, open_page, netcat = web()
    alice = open_page("alice")
    bob = open_page("bob")
    alice.roster("alice", "bob")
    carol = netcat("carol")
    carol.say("/join #games", "anyone for chess?")
    carol.expect("You are now in #games")
    carol.expect(r"carol: anyone for chess\?")
    alice.sees("departure", "carol has left (joined #games)")

    alice.say("/join games")
    expect(alice.page.locator("#room")).to_have_text("#games")
    alice.sees("system", "You are now in #games")
    alice.roster("alice", "carol")
    # the room's history, framed, marked as history
    alice.sees("system", "--- last 1 line of #games ---")
    expect(alice.lines("chat", "carol: anyone for chess?")).to_have_class(
        re.compile(r"\bhistory\b")
    )
    carol.expect("alice has arrived")
    bob.sees("departure", "alice has left (joined #games)")
    bob.roster("bob")

    # the lobby's lines no longer reach alice: bob speaks (and sees his own
    # line, so the server has handled it), then carol speaks in #games
    bob.say("lobby only")
    bob.sees("chat", "bob: lobby only")
    carol.say("games only")
    alice.sees("chat", "carol: games only")
    expect(alice.lines(text="bob: lobby only")).to_have_count(0)
    expect(bob.lines(text="carol: games only")).to_have_count(0)

    alice.say("/join lobby")
    expect(alice.page.locator("#room")).to_have_text("#lobby")
    alice.roster("alice", "bob")
    bob.roster("alice", "bob")


def test_merged_arrivals_and_departures_keep_the_roster(web):
    """Rooms merge arrivals and departures into one line ("a, b have
    arrived", "a (x), b have left"), and truncate long lists ("and K
    more"): the roster still ends up right."""
    server, open_page, netcat = web("--arrival-merge-threshold", "1", "--roster-limit", "2")
    alice = open_page("alice")
    names = ["n1", "n2", "n3", "n4", "n5"]
    clients = [Netcat(server.port) for _ in names]
    try:
        for nc in clients:
            nc.expect(r".*What is your name\?")
        for nc, name in zip(clients, names):
            nc.say(name)
        alice.roster("alice", *names)
        reasons = ["a, b (c), d", "x) y", "", "and 2 more", "plain"]
        for nc, reason in zip(clients, reasons):
            nc.say(f"/quit {reason}".rstrip())
        alice.roster("alice")
    finally:
        for nc in clients:
            nc.close()
    for line in alice.page.locator("#log .line").all():
        text, kind = line.text_content(), line.get_attribute("data-kind")
        if re.search(r" ha(s|ve) arrived$", text):
            assert kind == "arrival", text
        elif " has left" in text or text.endswith(" have left"):
            assert kind == "departure", text
    expect(alice.page.locator('#log .line[data-kind="departure"]')).not_to_have_count(0)


def test_reconnects_after_a_server_restart(web, start_gchat):
    port, http = free_port(), free_port()
    args = ("--port", str(port), "--http", str(http))
    server, open_page, netcat = web(*args)
    assert (server.port, server.http_port) == (port, http)
    alice = open_page("alice")
    alice.say("/join games")
    expect(alice.page.locator("#room")).to_have_text("#games")

    server.stop()
    assert server.proc.returncode == 0
    # The page holds a session: it is told to resume elsewhere.  A restarted
    # process knows no session: the resume fails, and the page names itself.
    alice.sees("system", "server stopping; resume elsewhere")
    expect(alice.page.locator("#status")).to_contain_text("reconnecting")
    expect(alice.page.locator("#line")).to_be_disabled()

    again = start_gchat(*args)
    assert (again.port, again.http_port) == (port, http)
    expect(alice.page.locator("#status")).to_have_text("connected", timeout=20_000)
    expect(alice.page.locator("#room")).to_have_text("#games")
    expect(alice.lines("system", "You are alice")).to_have_count(2)
    alice.sees("system", "error: cannot resume: unknown or expired session")
    bob = Netcat(again.port)
    try:
        bob.named("bob")
        bob.say("/join games")
        bob.expect(r"Also here \(1\): alice")
        alice.roster("alice", "bob")
        alice.say("back again")
        bob.expect("alice: back again")
    finally:
        bob.close()


def test_a_dropped_page_resumes_with_every_line_once_and_nobody_sees_it_go(web):
    server, open_page, netcat = web()
    alice = open_page("alice")
    alice.say("/join ops")
    expect(alice.page.locator("#room")).to_have_text("#ops")
    bob = netcat("bob")
    bob.say("/join ops")
    bob.expect(r"Also here \(1\): alice")
    alice.roster("alice", "bob")
    bob.say("before the drop")
    alice.sees("chat", "bob: before the drop")
    # The page's connection drops (as a network change does); it reconnects
    # by itself and resumes while bob talks.
    alice.page.evaluate("window.gchat.state.ws.close()")
    bob.say(*[f"line {i}" for i in range(20)])
    expect(alice.page.locator("#status")).to_have_text("connected", timeout=20_000)
    for i in range(20):
        alice.sees("chat", f"bob: line {i}")
    shown = alice.lines("chat").all_text_contents()
    assert shown == ["bob: before the drop"] + [f"bob: line {i}" for i in range(20)]
    assert not any(text.startswith("@") for text in alice.lines().all_text_contents())
    expect(alice.page.locator("#me")).to_have_text("alice")
    expect(alice.page.locator("#room")).to_have_text("#ops")
    expect(alice.lines("system", "You are alice")).to_have_count(1)  # resumed, not named again
    alice.say("still here")
    bob.expect("alice: still here")
    # bob never saw alice leave or arrive.
    assert not [line for line in bob.received if "alice has" in line], bob.received


def test_log_keeps_at_most_1000_lines(web):
    server, open_page, netcat = web("--flood-rate", "0")
    alice = open_page("alice")
    flood = netcat("flood")
    alice.sees("arrival", "flood has arrived")
    count = 1200
    flood.say(*(f"line {i:04d}" for i in range(count)))
    alice.sees("chat", f"flood: line {count - 1:04d}")
    log = alice.page.locator("#log")
    assert log.locator(".line").count() == 1000
    expect(alice.lines(text="flood: line 0000")).to_have_count(0)
    # stuck to the bottom: the newest line is in view
    expect(alice.lines("chat", f"flood: line {count - 1:04d}")).to_be_in_viewport()
    # and it stays usable: a line typed now goes out and comes back
    alice.say("still here")
    alice.sees("chat", "alice: still here")
    assert log.locator(".line").count() <= 1000


def test_ten_lines_a_second(web):
    """A room at 10 lines/s for two seconds: everything arrives in order."""
    server, open_page, netcat = web()
    alice = open_page("alice")
    talker = netcat("talker")
    alice.sees("arrival", "talker has arrived")
    done = threading.Event()

    def talk():
        for i in range(20):
            talker.say(f"tick {i:02d}")
            if done.wait(0.1):  # paces the sender at 10 lines/s; not a synchronisation
                return

    thread = threading.Thread(target=talk, daemon=True)
    thread.start()
    try:
        alice.sees("chat", "talker: tick 19")
    finally:
        done.set()
        thread.join(5)
    texts = alice.page.locator('#log .line[data-kind="chat"]').all_text_contents()
    assert texts == [f"talker: tick {i:02d}" for i in range(20)]


def test_screenshot_for_the_readme(web, tmp_path):
    """docs/screenshot.png: bob's page, after a little of everything."""
    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "screenshot.png")
    server, open_page, netcat = web()
    viewport = {"width": 1100, "height": 600}
    bob = open_page("bob", viewport=viewport)
    alice = open_page("alice", viewport=viewport)
    carol = netcat("carol")
    bob.sees("arrival", "carol has arrived")
    # one line at a time, each seen before the next, so the picture is stable
    scene = [
        (bob, "morning all", "chat", "bob: morning all"),
        (alice, "hi bob! is the build green?", "chat", "alice: hi bob! is the build green?"),
        (bob, "/me checks the dashboard", "me", "* bob checks the dashboard"),
        (bob, "all green, ship it", "chat", "bob: all green, ship it"),
        (
            carol,
            "nice. I'm on the nc side of things, by the way",
            "chat",
            "carol: nice. I'm on the nc side of things, by the way",
        ),
        (alice, "/msg bob lunch at noon?", "private", "alice (private): lunch at noon?"),
        (bob, "/msg alice sure", "private", "bob (private to alice): sure"),
        (alice, "/nick alice_w", "system", "alice is now known as alice_w"),
        (carol, "/quit coffee", "departure", "carol has left (coffee)"),
        (bob, "/jion games", "error", "error: unknown command /jion (try /help)"),
    ]
    for who, typed, kind, shown in scene:
        who.say(typed)
        bob.sees(kind, shown)
    bob.roster("alice_w", "bob")
    bob.page.locator("#line").fill("/join games")
    shot.parent.mkdir(parents=True, exist_ok=True)
    bob.page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_a_signed_in_page_takes_its_token_from_the_fragment(start_gchat, browser, tmp_path):
    import jwt  # the auth extra's

    secret = "the application's backend and gchat share this secret, 48 bytes"
    key = tmp_path / "auth.key"
    key.write_text(secret)
    server = start_gchat("--auth-key", str(key), "--http", "0")
    token = jwt.encode({"sub": "alice", "exp": time.time() + 600}, secret, "HS256")
    page = Page(browser, server, path=f"/#token={token}")
    try:
        expect(page.page.locator("#me")).to_have_text("alice")
        expect(page.page.locator("#name-overlay")).to_be_hidden()
        # Out of the address bar at once, and never sent to the server.
        assert "token" not in page.page.url
        assert token not in server.stderr_text()
        page.say("hello")
        page.sees("chat", "alice: hello")
    finally:
        page.close()
