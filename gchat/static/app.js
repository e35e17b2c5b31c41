// gchat's web page: the line protocol of docs/protocol.md over a WebSocket at /ws.
// Plain JavaScript, no build step, no dependencies.  Everything the server
// (or another user) says is put on the page with textContent, never as HTML.
"use strict";

(function () {
  const MAX_LINES = 1000;          // line elements kept in the log
  const BACKOFF_FIRST_MS = 250;    // first reconnect delay, doubled per failure
  const BACKOFF_MAX_MS = 8000;
  const INPUT_HISTORY = 100;       // typed lines recalled with Up/Down

  // A name: letters of any script with their marks, decimal digits, _ - .
  const N = "[\\p{L}\\p{M}\\p{Nd}_.\\-]+";
  const re = (source) => new RegExp(source, "u");
  const RE = {
    error: /^error: /,
    privateTo: re(`^(${N}) \\(private to (${N})\\): `),
    privateFrom: re(`^(${N}) \\(private\\): `),
    stats: /^stats: clients=/,
    chat: re(`^(${N}): `),
    me: re(`^\\* (${N}) `),
    arrivedOne: re(`^(${N}) has arrived$`),
    arrivedMany: re(`^(${N}(?:, ${N})*)(?: and (\\d+) more)? have arrived$`),
    leftOne: re(`^(${N}) has left(?: \\((.*)\\))?$`),
    leftMany: re(`^(${N}(?: \\(.*?\\))?(?:, .+?)?)(?: and (\\d+) more)? have left$`),
    nick: re(`^(${N}) is now known as (${N})$`),
    youAre: re(`^You are (${N})$`),
    nowIn: /^You are now in #(.+)$/u,
    roster: /^(Also here|Here now) \((\d+)\): (.*?)(?:, and (\d+) more \(\/who lists all\))?$/u,
    nobody: /^Nobody (else )?is here\.$/,
    prompt: /What is your name\?$/,
    histOpen: /^--- last \d+ lines? of #.+ ---$/,
    histClose: /^--- end of history ---$/,
    goodbye: /^Goodbye\.$/,
    quitCommand: /^\/quit(\s|$)/i,
    // Sessions (docs/protocol.md): a line of the room's order comes as
    // "@ID LINE" once the page holds a session; IDs are opaque.
    tagged: /^@(\S+) (.*)$/su,
    session: /^session ([A-Za-z0-9_-]{22,})$/,
    resumed: re(`^resumed (${N}) #(.+) (\\d+|gap)$`),
    resumeFailed: /^error: (cannot resume|too many failed resumes)/,
    resumedElsewhere: /^error: resumed elsewhere$/,
    // Signing in (--auth-key): the prompt, and the ends a token can come to.
    authPrompt: /^Welcome to gchat\. Sign in with \/auth TOKEN\.$/,
    authEnded: /^error: (authentication failed|too many failed sign-ins|signed in elsewhere|token expired; disconnecting)/,
    tokenAsked: /^error: token expired; send \/auth TOKEN within \d+ s$/,
  };
  const GAP_NOTE = "some messages could not be recovered";

  // What kind of line this is: chat | me | arrival | departure | private |
  // error | system.  The order matters: "error: x" would otherwise be chat.
  function classify(line) {
    if (RE.error.test(line)) return "error";
    if (RE.privateTo.test(line) || RE.privateFrom.test(line)) return "private";
    if (RE.stats.test(line)) return "system";
    if (RE.chat.test(line)) return "chat";
    if (RE.me.test(line)) return "me";
    if (RE.arrivedOne.test(line) || RE.arrivedMany.test(line)) return "arrival";
    if (RE.leftOne.test(line) || RE.leftMany.test(line)) return "departure";
    return "system";
  }

  // Names are one name regardless of case and compatibility forms.
  const fold = (name) => name.normalize("NFKC").toLowerCase();

  const $ = (id) => document.getElementById(id);
  const el = {
    log: $("log"), jump: $("jump"), roster: $("roster"), rosterCount: $("roster-count"),
    room: $("room"), me: $("me"), status: $("status"),
    say: $("say"), line: $("line"), send: $("send"),
    nameOverlay: $("name-overlay"), nameForm: $("name-form"), name: $("name"),
    nameError: $("name-error"), nameSubmit: $("name-submit"), nameQuestion: $("name-question"),
    gone: $("gone"), again: $("again"),
  };

  const state = {
    ws: null,
    phase: "idle",         // idle | connecting | connected | naming | named | closed
    myName: null,          // the name the server gave us
    savedName: null,       // answered automatically after a reconnect
    autoAnswered: false,   // the current name answer was sent automatically
    autoFailed: false,     // ... and the server refused it: ask the person
    pendingName: null,     // typed before the server asked
    nameInFlight: false,   // a name was sent; its answer has not come yet
    room: null,            // shown without the "#"
    wantRoom: null,        // re-joined after a reconnect
    roster: new Map(),     // folded name -> name as spelled
    autoWho: 0,            // /who answers we asked for ourselves (not shown)
    resuming: false,       // a /resume was sent; its answer has not come yet
    auth: false,           // the server asks for /auth TOKEN instead of a name
    sessionAsked: false,   // a /session was sent; its answer is not shown
    inHistory: false,
    retries: 0,
    reconnectTimer: null,
    quitting: false,
    typed: [], typedAt: 0,
  };

  try { state.savedNameHint = window.localStorage.getItem("gchat.name") || ""; } catch (e) { state.savedNameHint = ""; }

  // A sign-in token from the address's fragment (/#token=...): browsers
  // never send a fragment to the server, so it stays out of its logs.  It
  // is kept in this page's memory alone and taken out of the address bar
  // at once (and so out of the history and of a bookmark).
  const authToken = (() => {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (!m) return null;
    try { history.replaceState(null, "", location.pathname + location.search); } catch (e) { /* no history */ }
    try { return decodeURIComponent(m[1]); } catch (e) { return null; }
  })();

  // The session: its token and the last id shown, per tab (sessionStorage:
  // gone when the tab closes), so that a reconnect resumes where the page
  // was, and nothing is shown twice.
  const session = {
    get(key) { try { return window.sessionStorage.getItem(key); } catch (e) { return null; } },
    set(key, value) { try { window.sessionStorage.setItem(key, value); } catch (e) { /* private mode */ } },
    clear() {
      try {
        window.sessionStorage.removeItem("gchat.session");
        window.sessionStorage.removeItem("gchat.lastId");
      } catch (e) { /* private mode */ }
    },
  };

  // ---------------------------------------------------------------- status

  function setStatus(kind, text) {
    document.body.dataset.conn = kind;  // the roster is dimmed while it may be stale
    el.status.dataset.state = kind;
    el.status.textContent = text;
  }

  function setRoom(room) {
    state.room = room;
    el.room.textContent = room ? "#" + room : "";
    document.title = room ? `#${room} · gchat` : "gchat";
  }

  function setMe(name) {
    state.myName = name;
    el.me.textContent = name || "";
  }

  // ---------------------------------------------------------------- roster

  function rosterReset(names) {
    state.roster.clear();
    for (const name of names) state.roster.set(fold(name), name);
    if (state.myName) state.roster.set(fold(state.myName), state.myName);
    renderRoster();
  }

  function rosterAdd(name) { state.roster.set(fold(name), name); }
  function rosterRemove(name) { state.roster.delete(fold(name)); }

  function renderRoster() {
    const names = [...state.roster.values()].sort((a, b) => fold(a) < fold(b) ? -1 : fold(a) > fold(b) ? 1 : 0);
    const frag = document.createDocumentFragment();
    const mine = state.myName ? fold(state.myName) : null;
    for (const name of names) {
      const li = document.createElement("li");
      li.textContent = name;
      li.dataset.name = name;
      li.style.setProperty("--hue", hue(name));
      if (fold(name) === mine) li.classList.add("self");
      frag.appendChild(li);
    }
    el.roster.replaceChildren(frag);
    el.rosterCount.textContent = names.length ? String(names.length) : "";
  }

  function askWho() {
    state.autoWho += 1;
    send("/who");
  }

  // Names from "a, b, c" (a roster or an arrival run).
  const splitNames = (list) => list ? list.split(", ").filter(Boolean) : [];

  // Names from a departure run: "a (joined #x), b, c (idle timeout)".  A
  // reason may hold anything, so this is a best effort; /who settles it.
  function departedNames(list) {
    const names = [];
    const item = re(`(?:^|, )(${N})(?= \\(|, |$)`);
    let rest = list;
    for (;;) {
      const m = item.exec(rest);
      if (!m) break;
      names.push(m[1]);
      rest = rest.slice(m.index + m[0].length);
      if (rest.startsWith(" (")) {
        const close = rest.indexOf("), ");
        if (close < 0) break;
        rest = rest.slice(close + 1);
      }
    }
    return names;
  }

  // ---------------------------------------------------------------- the log

  // A stable colour per name: FNV-1a of the folded name picks one of a
  // dozen hues far enough apart to tell apart.
  const HUES = [210, 340, 140, 45, 275, 185, 0, 95, 305, 235, 160, 25];
  function hue(name) {
    let h = 0x811c9dc5;
    for (const ch of fold(name)) h = Math.imul(h ^ ch.codePointAt(0), 0x01000193) >>> 0;
    return String(HUES[h % HUES.length]);
  }

  function span(cls, text, name) {
    const s = document.createElement("span");
    s.className = cls;
    s.textContent = text;
    if (name) s.style.setProperty("--hue", hue(name));
    return s;
  }

  function clock() {
    const d = new Date();
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  // One line element; its textContent is exactly the line.
  function lineElement(line, kind, local) {
    const div = document.createElement("div");
    div.className = "line";
    div.dataset.kind = kind;
    div.dataset.time = clock();
    if (local) div.classList.add("local");
    if (state.inHistory && !local) div.classList.add("history");
    let m;
    if (kind === "chat" && (m = RE.chat.exec(line))) {
      div.append(span("who", m[1], m[1]), span("sep", ": "), span("text", line.slice(m[0].length)));
      markOwn(div, m[1], line.slice(m[0].length));
    } else if (kind === "me" && (m = RE.me.exec(line))) {
      div.append(span("star", "* "), span("who", m[1], m[1]), span("text", line.slice(m[0].length - 1)));
      markOwn(div, m[1], "");
    } else if (kind === "private" && (m = RE.privateTo.exec(line) || RE.privateFrom.exec(line))) {
      const head = line.slice(m[1].length, m[0].length);
      div.append(span("who", m[1], m[1]), span("tag", head), span("text", line.slice(m[0].length)));
    } else {
      div.append(span("text", line));
    }
    return div;
  }

  function markOwn(div, who, text) {
    if (!state.myName) return;
    if (fold(who) === fold(state.myName)) {
      div.classList.add("mine");
    } else if (text && fold(text).includes(fold(state.myName))) {
      div.classList.add("mention");
    }
  }

  function nearBottom() {
    return el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 48;
  }

  function appendLines(elements) {
    if (!elements.length) return;
    const stick = nearBottom();
    const frag = document.createDocumentFragment();
    for (const e of elements) frag.appendChild(e);
    el.log.appendChild(frag);
    let extra = el.log.childElementCount - MAX_LINES;
    while (extra-- > 0) el.log.firstElementChild.remove();
    if (stick) {
      el.log.scrollTop = el.log.scrollHeight;
      el.jump.hidden = true;
    } else {
      el.jump.hidden = false;
    }
  }

  function note(text, kind) {
    appendLines([lineElement(text, kind || "system", true)]);
  }

  el.log.addEventListener("scroll", () => { if (nearBottom()) el.jump.hidden = true; });
  el.jump.addEventListener("click", () => {
    el.log.scrollTop = el.log.scrollHeight;
    el.jump.hidden = true;
  });

  // ---------------------------------------------------------------- lines in

  // Handles one line from the server; returns its element, or null when it
  // is not to be shown (the answer to a /who the page sent by itself).
  function handle(line) {
    let m = RE.tagged.exec(line);
    if (m) {
      session.set("gchat.lastId", m[1]);
      line = m[2];
    }
    const kind = classify(line);

    if (state.resuming) {
      if ((m = RE.resumed.exec(line))) {
        state.resuming = false;
        resumedAs(m[1], m[2]);
        if (m[3] === "gap") return lineElement(GAP_NOTE, "error", true);
        return null;
      }
      if (RE.resumeFailed.test(line)) {
        state.resuming = false;
        session.clear();  // a fresh start: the prompt follows, or a reconnect
        return lineElement(line, "system");
      }
    }

    if (RE.authEnded.test(line)) {
      state.quitting = true;  // the same token would only be refused again
    }
    if (RE.tokenAsked.test(line) && authToken) {
      send(`/auth ${authToken}`);  // a node that has not seen it asks again
    }

    if (state.phase !== "named") {
      if (RE.authPrompt.test(line)) {
        state.phase = "naming";
        state.auth = true;
        answerPrompt();
        return lineElement(line, "system");
      }
      if (kind === "error" && state.auth) {
        state.nameInFlight = false;
        return lineElement(line, kind);  // the sign-in's error: no name form
      }
      if (RE.prompt.test(line)) {
        state.phase = "naming";
        answerPrompt();
        return lineElement(line, "system");
      }
      if (kind === "error" && state.phase === "naming") {
        state.nameInFlight = false;
        if (state.autoAnswered) state.autoFailed = true;
        state.autoAnswered = false;
        showNameForm(line.slice("error: ".length));
        return lineElement(line, kind);
      }
      if ((m = RE.youAre.exec(line))) {
        named(m[1]);
        return lineElement(line, "system");
      }
      return lineElement(line, kind);
    }

    if (RE.histOpen.test(line)) {
      const e = lineElement(line, "system");
      e.classList.add("frame");
      state.inHistory = true;
      return e;
    }
    if (RE.histClose.test(line)) {
      state.inHistory = false;
      const e = lineElement(line, "system");
      e.classList.add("frame");
      return e;
    }

    if ((m = RE.session.exec(line))) {
      session.set("gchat.session", m[1]);
      state.sessionAsked = false;
      return null;
    }
    if (RE.resumedElsewhere.test(line)) {
      state.quitting = true;  // another connection holds this session now
    }

    switch (kind) {
      case "arrival":
        if ((m = RE.arrivedOne.exec(line))) {
          rosterAdd(m[1]);
        } else if ((m = RE.arrivedMany.exec(line))) {
          splitNames(m[1]).forEach(rosterAdd);
          if (m[2]) askWho();
        }
        renderRoster();
        break;
      case "departure":
        if ((m = RE.leftOne.exec(line))) {
          rosterRemove(m[1]);
        } else if ((m = RE.leftMany.exec(line))) {
          departedNames(m[1]).forEach(rosterRemove);
          askWho();  // reasons may hold anything: let the server say who is left
        }
        renderRoster();
        break;
      case "system":
        if ((m = RE.nowIn.exec(line))) {
          setRoom(m[1]);
          state.wantRoom = m[1];
          rosterReset([]);
          askWho();
        } else if ((m = RE.roster.exec(line))) {
          rosterReset(splitNames(m[3]));
          if (m[1] === "Here now" && state.autoWho > 0) {
            state.autoWho -= 1;
            return null;
          }
          if (m[4] && m[1] === "Also here") askWho();
        } else if (RE.nobody.test(line)) {
          rosterReset([]);
        } else if ((m = RE.nick.exec(line))) {
          rosterRemove(m[1]);
          rosterAdd(m[2]);
          if (state.myName && fold(m[1]) === fold(state.myName)) {
            setMe(m[2]);
            remember(m[2]);
          }
          renderRoster();
        } else if (RE.goodbye.test(line)) {
          state.quitting = true;
        }
        break;
    }
    return lineElement(line, kind);
  }

  // The session resumed as name in room: no greeting, no /join; the
  // missed lines follow.
  function resumedAs(name, room) {
    state.phase = "named";
    state.nameInFlight = false;
    state.retries = 0;
    state.inHistory = false;
    setMe(name);
    remember(name);
    hideNameForm();
    setRoom(room);
    state.wantRoom = room;
    rosterReset([]);
    setStatus("connected", "connected");
    el.line.disabled = false;
    el.send.disabled = false;
    el.line.focus();
    askWho();
  }

  function named(name) {
    state.phase = "named";
    state.nameInFlight = false;
    state.retries = 0;
    state.autoAnswered = false;
    state.autoFailed = false;
    state.inHistory = false;
    setMe(name);
    remember(name);
    hideNameForm();
    setRoom("lobby");
    rosterReset([]);
    setStatus("connected", "connected");
    el.line.disabled = false;
    el.send.disabled = false;
    el.line.focus();
    // A session for this tab: its lines come with ids from now on.
    session.clear();
    state.sessionAsked = send("/session");
    const back = state.wantRoom;
    if (back && fold(back) !== "lobby") {
      send("/join #" + back);   // its "You are now in" asks /who
    } else {
      askWho();
    }
  }

  function remember(name) {
    state.savedName = name;
    try { window.localStorage.setItem("gchat.name", name); } catch (e) { /* private mode */ }
  }

  // ---------------------------------------------------------------- naming

  function answerPrompt() {
    if (state.nameInFlight || state.resuming) return;  // typed after an error, before the question came again
    const token = session.get("gchat.session");
    if (token && !state.pendingName) {
      state.resuming = send(`/resume ${token} ${session.get("gchat.lastId") || "-"}`);
      if (state.resuming) return;
    }
    if (state.auth) {
      // The name is the token's: no form to fill.
      if (authToken) state.nameInFlight = send(`/auth ${authToken}`);
      else note("this server needs a sign-in token: open the page with #token=... in its address");
      return;
    }
    if (state.pendingName) {
      const name = state.pendingName;
      state.pendingName = null;
      state.autoAnswered = false;
      sendName(name);
      return;
    }
    if (state.savedName && !state.autoFailed) {
      state.autoAnswered = true;
      sendName(state.savedName);
      return;
    }
    showNameForm();
  }

  function sendName(name) {
    state.nameInFlight = send(name);
  }

  function showNameForm(error) {
    el.nameOverlay.hidden = false;
    el.nameSubmit.disabled = false;
    if (!el.name.value) el.name.value = state.savedName || state.savedNameHint || "";
    if (error) {
      el.nameError.textContent = error;
      el.nameError.hidden = false;
    }
    el.name.focus();
    el.name.select();
  }

  function hideNameForm() {
    el.nameOverlay.hidden = true;
    el.nameError.hidden = true;
    el.nameError.textContent = "";
  }

  el.nameForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = el.name.value.trim();
    if (!name) return;
    el.nameError.hidden = true;
    state.autoFailed = true;  // the person chose; do not answer for them
    if (state.phase === "naming" && isOpen()) {
      el.nameSubmit.disabled = true;
      sendName(name);
    } else {
      state.pendingName = name;
    }
  });

  // ---------------------------------------------------------------- lines out

  function isOpen() {
    return state.ws && state.ws.readyState === WebSocket.OPEN;
  }

  function send(text) {
    if (!isOpen()) return false;
    state.ws.send(text);
    return true;
  }

  el.say.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.line.value;
    if (!text.trim()) return;
    if (!send(text)) return;  // kept in the box until we are back
    if (text.split("\n").some((l) => RE.quitCommand.test(l))) state.quitting = true;
    state.typed.push(text);
    if (state.typed.length > INPUT_HISTORY) state.typed.shift();
    state.typedAt = state.typed.length;
    el.line.value = "";
  });

  el.line.addEventListener("keydown", (event) => {
    if (event.key === "ArrowUp" && state.typedAt > 0) {
      state.typedAt -= 1;
      el.line.value = state.typed[state.typedAt];
      event.preventDefault();
    } else if (event.key === "ArrowDown" && state.typedAt < state.typed.length) {
      state.typedAt += 1;
      el.line.value = state.typed[state.typedAt] || "";
      event.preventDefault();
    }
  });

  el.roster.addEventListener("click", (event) => {
    const li = event.target.closest("li");
    if (!li || li.classList.contains("self") || el.line.disabled) return;
    el.line.value = `/msg ${li.dataset.name} `;
    el.line.focus();
  });

  // ---------------------------------------------------------------- the connection

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    state.phase = "connecting";
    state.quitting = false;
    state.nameInFlight = false;
    state.resuming = false;
    state.sessionAsked = false;
    state.autoWho = 0;
    state.inHistory = false;
    if (state.retries === 0) setStatus("connecting", "connecting…");
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    let carry = "";
    ws.onopen = () => {
      state.phase = "connected";
      setStatus("connecting", state.retries ? "reconnecting: connected, signing in…" : "connected, signing in…");
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      const parts = (carry + event.data).split("\n");
      carry = parts.pop();  // "" when the frame ended its last line
      const shown = [];
      for (const raw of parts) {
        const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        const e = handle(line);
        if (e) shown.push(e);
      }
      appendLines(shown);
    };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.ws = null;
      const wasNamed = state.phase === "named";
      state.phase = "closed";
      el.line.disabled = true;
      el.send.disabled = true;
      el.nameSubmit.disabled = true;
      if (state.quitting) {
        setStatus("closed", "disconnected");
        note("disconnected");
        el.gone.hidden = false;
        el.again.focus();
        return;
      }
      if (wasNamed) note("connection lost; reconnecting…");
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.retries);
    const jittered = Math.round(delay * (0.8 + Math.random() * 0.4));
    state.retries += 1;
    setStatus("reconnecting", `reconnecting in ${(jittered / 1000).toFixed(1)} s…`);
    state.reconnectTimer = setTimeout(connect, jittered);
  }

  el.again.addEventListener("click", () => {
    el.gone.hidden = true;
    state.retries = 0;
    connect();
  });

  // Closing the tab is leaving: the session ends with it, and the room sees
  // the departure now rather than when the resume window ends.  (A dropped
  // network sends nothing, and the session waits for the page to resume.)
  window.addEventListener("pagehide", (event) => {
    if (event.persisted || !isOpen() || state.phase !== "named") return;
    state.quitting = true;
    send("/quit");
  });

  // For the tests and the curious: the classifier, without side effects.
  window.gchat = { classify, state, MAX_LINES };

  el.name.value = state.savedNameHint;
  connect();
})();
