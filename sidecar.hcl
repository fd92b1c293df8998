# sidecar.hcl — wsidecar in front of the example legacy chat service
# (examples/legacy). Every option, its type and default: docs/config.md.
#
# Run the demo:   go run ./examples/demo
# Check a file:   wsidecar validate sidecar.hcl

# Where WebSocket clients connect. Add a tls block for wss://:
#   tls { cert_file = "/etc/wsidecar/tls.crt"  key_file = "/etc/wsidecar/tls.key" }
listener {
  address = env("WSIDECAR_LISTEN", "127.0.0.1:8080")
}

# Pod-local listener for the push API, /metrics, /healthz and /readyz.
# Keep it on loopback; set a token when anything else shares the network namespace.
admin {
  address = env("WSIDECAR_ADMIN", "127.0.0.1:9090")
  token   = env("SIDECAR_ADMIN_TOKEN", "")
}

# The legacy service. wsidecar only ever speaks plain HTTP/1.1 to it.
backend {
  url     = env("BACKEND_URL", "http://127.0.0.1:5000")
  timeout = "5s"

  # Sign every webhook (X-WS-Signature) so the backend can trust the caller.
  signing_secret = env("SIGNING_SECRET", "")

  # Stop hammering a backend that is down; handshakes get 503 + Retry-After.
  breaker {
    failures     = 5
    open_timeout = "5s"
  }
}

# Browsers may connect only from these pages (the chat page is served by the backend).
origins {
  allow = [
    env("WSIDECAR_ORIGIN", "http://127.0.0.1:5000"),
    "http://localhost:5000",
  ]
}

limits {
  per_ip_connections = 50
  handshake_rate     = "20/s"
  message_rate       = "50/s"
  max_message_size   = "16KiB"
  rate_policy        = "reply"
  slow_consumer      = "close"
}

heartbeat {
  interval = "25s"
  timeout  = "10s"
}

drain {
  window  = "5s"
  timeout = "20s"
}

log {
  level  = "info"
  format = "text"
}

# The chat endpoint. The demo is anonymous; production routes verify a JWT
# (add a jwt block and drop `auth = "none"`).
route "/ws" {
  auth          = "none"
  subprotocols  = ["chat.v1"]
  on_connect    = "/ws/connect"
  on_message    = "/ws/message"
  on_disconnect = "/ws/disconnect"
  on_error      = "reply"

  # Every socket hears the backend's notices feed (see the stream below).
  channels = ["notices"]
}

# The backend's SSE feed: each event goes to the channel named by its
# `event:` field ("notices"), reconnecting with Last-Event-ID when cut.
stream "notices" {
  path = "/events"
}
