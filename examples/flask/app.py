#!/usr/bin/env python3
"""The wsidecar example chat backend, in Flask.

It speaks the same webhook protocol and chat conversation as the Go backend
in examples/legacy, to show that a service behind wsidecar needs nothing but
plain HTTP: webhooks in (/ws/connect, /ws/message, /ws/disconnect), pushes
out (POST to the sidecar's admin listener) and an SSE feed (/events).

Flags and environment variables are the Go backend's: --addr (LEGACY_ADDR),
--sidecar-admin (SIDECAR_ADMIN), --ws-url (WS_URL), --admin-token
(SIDECAR_ADMIN_TOKEN), --notice-every (NOTICE_EVERY, seconds), and
SIGNING_SECRET to require signed webhooks.
"""

import argparse
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from flask import Flask, Response, request, send_from_directory
from werkzeug.serving import make_server

ACTIONS_TYPE = "application/vnd.wsidecar+json"
CHAT_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "chat"))
PAGE_FILES = {"index.html", "app.js", "style.css"}
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
EVENT_ID_RE = re.compile(r"[0-9]{1,18}")
MAX_BODY = 64 << 10
MAX_LOG = 1000
MAX_NICK = 32
MAX_TEXT = 1000
SIG_MAX_AGE = 300  # seconds
KEEP_ALIVE = 15  # seconds between SSE comment lines on an idle stream

log = logging.getLogger("legacy-flask")


def dumps(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def error_reply(status, code, message):
    return Response(dumps({"error": {"code": code, "message": message}}), status, mimetype="application/json")


def actions_reply(doc):
    return Response(dumps(doc), 200, content_type=ACTIONS_TYPE)


def verify_signature(secret, header, timestamp, conn_id, body, now):
    """Checks X-WS-Signature: v1=<hex HMAC-SHA256(secret, ts + "." + conn id + "." + body)>."""
    if not header or not timestamp:
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > SIG_MAX_AGE:
        return False  # a captured call cannot be replayed later
    # Headers arrive decoded as latin-1; encoding back gives the bytes sent.
    signed = f"{timestamp}.{conn_id}.".encode("latin-1") + body
    want = hmac.new(secret, signed, hashlib.sha256).hexdigest().encode()
    for part in header.split(","):  # several values: the secret is being rotated
        part = part.strip()
        if part.startswith("v1=") and hmac.compare_digest(part[3:].lower().encode("latin-1"), want):
            return True
    return False


def reject_constant(name):
    """NaN and Infinity are not JSON, whatever Python's parser allows."""
    raise ValueError(f"{name} is not JSON")


def clean_nick(nick):
    nick = nick.strip()[:MAX_NICK] if isinstance(nick, str) else ""
    return nick or "anon"


class Notices:
    """The /events feed: a bounded history so that a reader that was cut off
    can come back with Last-Event-ID and miss nothing still kept."""

    def __init__(self, size=100):
        self.size = size
        self.history = []
        self.last = 0
        self.cond = threading.Condition()

    def add(self, text):
        with self.cond:
            self.last += 1
            ev = {"type": "notice", "text": text, "id": self.last}
            self.history = (self.history + [ev])[-self.size:]
            self.cond.notify_all()
            return ev

    def latest(self):
        with self.cond:
            return self.last

    def since(self, after, timeout):
        """Notices after `after` (waiting up to timeout for one) and the id to
        continue from. An id from the future means this process restarted
        and counts from 1 again, so everything kept is new to the reader."""
        with self.cond:
            if after > self.last:
                after = 0
            if self.last == after:
                self.cond.wait(timeout)
            evs = [ev for ev in self.history if ev["id"] > after]
            return evs, (evs[-1]["id"] if evs else after)


def create_app(sidecar_admin, ws_url, admin_token="", signing_secret=""):
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    admin = sidecar_admin.rstrip("/")
    secret = signing_secret.encode() if signing_secret else None
    lock = threading.Lock()  # guards conns, rooms and hooks
    conns = {}  # connection id -> {"nick", "room"}
    rooms = {}  # room -> set of connection ids
    hooks = []  # recent webhooks for /log
    notices = Notices()
    app.extensions["notices"] = notices

    def push(path, content_type, body):
        req = urllib.request.Request(admin + path, data=body, method="POST", headers={"Content-Type": content_type})
        if admin_token:
            req.add_header("Authorization", "Bearer " + admin_token)
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()

    def presence(conn_id, room, event, nick, count):
        msg = {"type": "presence", "room": room, "event": event, "id": conn_id, "nick": nick, "count": count}
        body = {"channels": ["room:" + room], "exclude": [conn_id], "text": dumps(msg)}
        try:
            push("/v1/push", "application/json", dumps(body).encode())
        except (urllib.error.URLError, OSError) as err:
            log.warning("presence push failed: room=%s err=%s", room, err)

    def leave_locked(conn_id, room):
        if not room:
            return 0
        members = rooms.get(room, set())
        members.discard(conn_id)
        if not members:
            rooms.pop(room, None)
        return len(members)

    def webhook(kind, handler):
        """Reads and authenticates a sidecar call, runs handler and records it."""

        def view():
            conn_id = request.headers.get("X-WS-Connection-Id", "")
            try:
                seq = int(request.headers.get("X-WS-Seq", "0"))
            except ValueError:
                seq = 0
            ev = {"kind": kind, "connection_id": conn_id, "status": 0}
            if request.headers.get("X-WS-User"):
                ev["user"] = request.headers["X-WS-User"]
            if seq:
                ev["seq"] = seq
            body = request.get_data()
            if not conn_id:
                resp = error_reply(400, "missing_connection_id", "X-WS-Connection-Id is required")
            elif secret and not verify_signature(
                secret, request.headers.get("X-WS-Signature"), request.headers.get("X-WS-Timestamp"),
                conn_id, body, int(time.time()),
            ):
                log.warning("webhook rejected: conn=%s bad signature", conn_id)
                resp = error_reply(401, "bad_signature", "webhook signature check failed")
            else:
                resp = handler(conn_id, body, ev)
            ev["status"] = resp.status_code
            with lock:
                hooks.append(ev)
                del hooks[:-MAX_LOG]
            return resp

        view.__name__ = "hook_" + kind
        return view

    def connect(conn_id, body, ev):
        query = urllib.parse.urlsplit(request.headers.get("X-WS-Path", "")).query
        if urllib.parse.parse_qs(query).get("reject") == ["1"]:
            ev["kind"] = "reject"
            return error_reply(403, "rejected", "connection refused by the legacy backend (reject=1)")
        with lock:
            conns.setdefault(conn_id, {"nick": "anon", "room": ""})
            names = sorted(rooms)
        welcome = {"type": "welcome", "id": conn_id, "rooms": names}
        # "notices" is where the sidecar publishes the /events stream.
        return actions_reply({"subscribe": ["lobby", "notices"], "frames": [{"text": dumps(welcome)}]})

    def message(conn_id, body, ev):
        if request.mimetype == "application/octet-stream":
            ev["type"] = "binary"
            return Response(body, 200, mimetype="application/octet-stream")
        try:
            m = json.loads(body, parse_constant=reject_constant)
        except ValueError:
            m = None
        if not isinstance(m, dict) or any(
            k in m and not isinstance(m[k], str) for k in ("type", "room", "text", "nick")
        ):
            return error_reply(400, "bad_json", "frames must be JSON objects")
        kind = m.get("type", "")
        if len(kind) <= 16:
            ev["type"] = kind
        if kind == "join":
            return join(conn_id, m)
        if kind == "say":
            return say(conn_id, m)
        if kind == "ping":
            return ping(m)
        return error_reply(400, "unknown_type", 'type must be "join", "say" or "ping"')

    def join(conn_id, m):
        room = m.get("room", "")
        if not ROOM_RE.fullmatch(room):
            return error_reply(400, "bad_room", "room must be 1-32 letters, digits, - or _")
        nick = clean_nick(m.get("nick"))
        with lock:
            member = conns.setdefault(conn_id, {"nick": nick, "room": ""})  # adopt after our restart
            prev = member["room"]
            member.update(nick=nick, room=room)
            prev_count = leave_locked(conn_id, prev)
            rooms.setdefault(room, set()).add(conn_id)
            count = len(rooms[room])
            members = sorted(conns[c]["nick"] for c in rooms[room])
        doc = {"subscribe": ["room:" + room], "frames": [{"text": dumps({"type": "joined", "room": room, "members": members})}]}
        if prev != room:
            if prev:
                doc["unsubscribe"] = ["room:" + prev]
                presence(conn_id, prev, "leave", nick, prev_count)
            presence(conn_id, room, "join", nick, count)
        return actions_reply(doc)

    def say(conn_id, m):
        room = m.get("room", "")
        if not ROOM_RE.fullmatch(room):
            return error_reply(400, "bad_room", "room must be 1-32 letters, digits, - or _")
        text = m.get("text", "").strip()
        if not text or len(text) > MAX_TEXT:
            return error_reply(400, "bad_text", f"text must be 1-{MAX_TEXT} characters")
        nick = clean_nick(m.get("nick"))
        if not m.get("nick"):
            with lock:
                nick = conns.get(conn_id, {}).get("nick", nick)
        msg = {"type": "chat", "room": room, "from": nick, "text": text, "ts": int(time.time() * 1000)}
        try:
            push("/v1/push/channel/" + urllib.parse.quote("room:" + room, safe=":"), "application/json", dumps(msg).encode())
        except (urllib.error.URLError, OSError) as err:
            log.warning("chat push failed: room=%s err=%s", room, err)
            return error_reply(502, "push_failed", "message could not be delivered")
        return Response(status=204)

    def ping(m):
        # Answered at once so the client measures the whole round trip.
        t = m.get("t")
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            return error_reply(400, "bad_ping", "t must be a number")
        return Response(dumps({"type": "pong", "t": t}), 200, mimetype="application/json")

    def disconnect(conn_id, body, ev):
        try:
            d = json.loads(body)
            d = d if isinstance(d, dict) else {}
        except ValueError:
            d = {}  # still a disconnect: a 4xx would only make the sidecar retry
        code = d.get("code")
        if isinstance(code, int) and code:
            ev["code"] = code
        with lock:
            member = conns.pop(conn_id, None)
            room = member["room"] if member else ""
            left = leave_locked(conn_id, room)
        log.info("disconnected: conn=%s code=%s clean=%s", conn_id, code, d.get("clean"))
        if room:
            presence(conn_id, room, "leave", member["nick"], left)
        return Response(status=204)

    app.add_url_rule("/ws/connect", view_func=webhook("connect", connect), methods=["POST"])
    app.add_url_rule("/ws/message", view_func=webhook("message", message), methods=["POST"])
    app.add_url_rule("/ws/disconnect", view_func=webhook("disconnect", disconnect), methods=["POST"])

    @app.get("/events")
    def events():
        after = notices.latest()
        last = request.headers.get("Last-Event-ID", "")
        if EVENT_ID_RE.fullmatch(last):
            after = int(last)

        def stream(after):
            yield ": stream open\n\n"  # sends the headers now
            while True:
                evs, after = notices.since(after, KEEP_ALIVE)
                if not evs:
                    yield ": keep-alive\n\n"  # also how a gone reader is noticed
                for ev in evs:
                    yield f"event: notices\nid: {ev['id']}\ndata: {dumps(ev)}\n\n"

        return Response(stream(after), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/notice")
    def post_notice():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
            return error_reply(400, "bad_notice", 'body must be {"text":"…"}')
        return Response(dumps(notices.add(body["text"])), 200, mimetype="application/json")

    @app.get("/log")
    def get_log():
        with lock:
            return Response(dumps(hooks), 200, mimetype="application/json")

    @app.get("/healthz")
    def healthz():
        return Response("ok\n", 200, mimetype="text/plain")

    @app.get("/config.js")
    def config_js():
        resp = Response(f"window.WSIDECAR = {dumps({'wsUrl': ws_url})};\n", 200, mimetype="text/javascript")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.get("/")
    @app.get("/<name>")
    def page(name="index.html"):
        if name not in PAGE_FILES:
            return Response("404 page not found\n", 404, mimetype="text/plain")
        return send_from_directory(CHAT_DIR, name)

    return app


def run_notices(notices, every, stop):
    while not stop.wait(every):
        notices.add("the legacy backend says hello; its clock reads " + time.strftime("%H:%M:%S", time.gmtime()))


def main(argv=None):
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--addr", default=env("LEGACY_ADDR", "127.0.0.1:5000"), help="listen address (env LEGACY_ADDR)")
    p.add_argument("--sidecar-admin", default=env("SIDECAR_ADMIN", "http://127.0.0.1:9090"),
                   help="wsidecar admin URL for pushes (env SIDECAR_ADMIN)")
    p.add_argument("--ws-url", default=env("WS_URL", "ws://127.0.0.1:8080/ws"),
                   help="public WebSocket URL the chat page connects to (env WS_URL)")
    p.add_argument("--admin-token", default=env("SIDECAR_ADMIN_TOKEN", ""),
                   help="bearer token for the push API (env SIDECAR_ADMIN_TOKEN)")
    p.add_argument("--notice-every", type=float, default=float(env("NOTICE_EVERY", "10")),
                   help="seconds between periodic SSE notices; 0 disables (env NOTICE_EVERY)")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(args.sidecar_admin, args.ws_url, args.admin_token, env("SIGNING_SECRET", ""))

    host, _, port = args.addr.rpartition(":")
    srv = make_server(host or "127.0.0.1", int(port), app, threaded=True)  # threads: one per SSE reader
    stop = threading.Event()
    if args.notice_every > 0:
        threading.Thread(target=run_notices, args=(app.extensions["notices"], args.notice_every, stop), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown, daemon=True).start())
    # The line tests and scripts wait for; the port is real even for ":0".
    print(f"legacy backend listening on http://{srv.host}:{srv.server_port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        srv.server_close()
    log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
