// wsidecar chat client: the browser's own WebSocket API, no framework, no
// build step. The backend never sees a socket; wsidecar turns every frame
// into a webhook and every push into a frame.
"use strict";

(() => {
  const BASE_MS = 250;     // first reconnect delay bound
  const CAP_MS = 10000;    // largest reconnect delay bound
  const PING_MS = 5000;    // round-trip probe interval
  const MAX_ITEMS = 500;   // keep the DOM small in long sessions

  const $ = (id) => document.getElementById(id);
  const ui = {
    nick: $("nick"), room: $("room"), text: $("text"), messages: $("messages"),
    state: $("state"), rtt: $("rtt"), joinForm: $("join-form"), sayForm: $("say-form"),
  };

  const wsURL = socketURL();
  let ws = null;        // the current socket, or null between attempts
  let attempt = 0;      // failed attempts since the last open socket
  let retryTimer = 0;
  let pingTimer = 0;
  let room = "";        // the room asked for; rejoined after every reconnect

  // socketURL takes the URL the backend injected through config.js; ?reject=1
  // on the page is passed on so the connect webhook's rejection can be shown.
  function socketURL() {
    const cfg = window.WSIDECAR || {};
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = new URL(cfg.wsUrl || `${scheme}//${location.hostname}:8080/ws`);
    if (new URLSearchParams(location.search).get("reject") === "1") url.searchParams.set("reject", "1");
    return url.toString();
  }

  function setState(s) {
    ui.state.textContent = s;
    ui.state.dataset.state = s;
  }

  function connect() {
    retryTimer = 0;
    setState(attempt === 0 ? "connecting" : "reconnecting");
    let sock;
    try {
      sock = new WebSocket(wsURL);
    } catch (err) {
      add("error", `cannot open ${wsURL}: ${err.message}`);
      return;
    }
    sock.binaryType = "arraybuffer";
    ws = sock;
    sock.onopen = () => {
      attempt = 0;
      setState("open");
      if (room) send({ type: "join", room, nick: nick() });
      ping();
      pingTimer = setInterval(ping, PING_MS);
    };
    sock.onmessage = (ev) => onFrame(ev.data);
    // An error event is always followed by close, so close does the work.
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      clearInterval(pingTimer);
      ui.rtt.textContent = "–";
      retry(ev);
    };
  }

  // retry waits a random time in [0, min(cap, base·2^attempt)) — "full
  // jitter", so a restarted sidecar is not hit by every tab at once.
  function retry(ev) {
    const delay = Math.random() * Math.min(CAP_MS, BASE_MS * 2 ** attempt);
    attempt++;
    setState("reconnecting");
    const why = ev.reason ? `${ev.code} ${ev.reason}` : `${ev.code}`;
    add("system", `connection closed (${why}); retrying in ${Math.round(delay)} ms`);
    retryTimer = setTimeout(connect, delay);
  }

  // Back online: do not sit out the rest of a long backoff.
  window.addEventListener("online", () => {
    if (ws === null && retryTimer) {
      clearTimeout(retryTimer);
      connect();
    }
  });

  function send(obj) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(typeof obj === "string" || obj instanceof ArrayBuffer || ArrayBuffer.isView(obj) ? obj : JSON.stringify(obj));
    return true;
  }

  function ping() {
    send({ type: "ping", t: performance.now() });
  }

  function onFrame(data) {
    if (typeof data !== "string") {
      const text = new TextDecoder().decode(data);
      add("binary", `binary echo, ${data.byteLength} bytes: ${text}`);
      return;
    }
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      add("text", data);
      return;
    }
    if (m === null || typeof m !== "object") {
      add("text", data);
      return;
    }
    if (m.error) {
      add("error", `${m.error.code || "error"}: ${m.error.message || ""}`);
      return;
    }
    switch (m.type) {
      case "welcome":
        add("welcome", `connected as ${m.id}` + (m.rooms && m.rooms.length ? `; active rooms: ${m.rooms.join(", ")}` : ""));
        break;
      case "joined":
        add("joined", `you joined #${m.room}` + (m.members && m.members.length ? `; here now: ${m.members.join(", ")}` : ""));
        break;
      case "presence":
        add("presence", `${m.nick || m.id} ${m.event === "leave" ? "left" : "joined"} #${m.room}`);
        break;
      case "chat":
        addChat(m);
        break;
      case "notice":
        add("notice", `notice: ${m.text}`);
        break;
      case "pong":
        ui.rtt.textContent = `${(performance.now() - Number(m.t)).toFixed(1)} ms`;
        break;
      default:
        add("text", data);
    }
  }

  // item builds a list entry; text goes in via textContent only, so nothing
  // a peer sends is ever parsed as HTML.
  function item(type, ts) {
    const li = document.createElement("li");
    li.dataset.type = type;
    const when = ts ? new Date(ts) : new Date();
    const time = document.createElement("time");
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString();
    li.append(time);
    return li;
  }

  function append(li) {
    const list = ui.messages;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(li);
    while (list.children.length > MAX_ITEMS) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function add(type, text) {
    const li = item(type);
    li.append(text);
    append(li);
  }

  function addChat(m) {
    const li = item("chat", m.ts);
    const from = document.createElement("span");
    from.className = "from";
    from.textContent = m.from;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = m.text;
    li.append(from, text);
    append(li);
  }

  function nick() {
    return ui.nick.value.trim() || "guest";
  }

  ui.joinForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!ui.room.checkValidity()) {
      ui.room.reportValidity();
      return;
    }
    room = ui.room.value.trim();
    if (!send({ type: "join", room, nick: nick() })) add("system", `will join #${room} once connected`);
  });

  ui.sayForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = ui.text.value.trim();
    if (!text) return;
    if (!room) {
      add("error", "join a room first");
      return;
    }
    const bin = text.match(/^\/binary\s+(.*)$/s);
    const ok = bin ? send(new TextEncoder().encode(bin[1])) : send({ type: "say", room, text, nick: nick() });
    if (!ok) {
      add("error", "not connected; message not sent");
      return;
    }
    ui.text.value = "";
    ui.text.focus();
  });

  if (!ui.nick.value) ui.nick.value = `guest-${Math.floor(1000 + Math.random() * 9000)}`;
  connect();
})();
