# A realistic sidecar.hcl: chat service behind wsidecar, every block used.

listener {
  address           = "0.0.0.0:8443"
  handshake_timeout = "5s"
  max_header_size   = "16KiB"
  read_buffer_size  = "2KiB"
  write_buffer_size = "4KiB"
  compression       = true

  tls {
    cert_file = "tls.crt" # relative to this file
    key_file  = "tls.key"
  }
}

admin {
  address = "0.0.0.0:9090"
  token   = env("WSIDECAR_ADMIN_TOKEN")
}

backend {
  url                  = "http://127.0.0.1:3000/"
  timeout              = "3s"
  max_conns            = 256
  signing_secret       = env("WSIDECAR_SIGNING_SECRET")
  forward_headers      = ["Cookie", "Accept-Language"]
  disconnect_queue     = 5000
  disconnect_retry_max = "1m"

  breaker {
    failures           = 3
    open_timeout       = "15s"
    half_open_requests = 2
    interval           = "0s"
  }
}

origins {
  allow         = ["https://App.Example.com", "https://*.example.com:8443"]
  allow_missing = false
}

jwt {
  sources         = ["cookie:session", "header"]
  issuer          = "https://idp.example.com/"
  audience        = ["chat", "chat-admin"]
  leeway          = "30s"
  require_exp     = true
  required_claims = ["sub", "org"]
  user_claim      = "sub"

  key "idp" {
    algorithms            = ["RS256", "PS256"]
    jwks_url              = "https://idp.example.com/.well-known/jwks.json"
    jwks_refresh          = "15m"
    jwks_unknown_kid_wait = "500ms"
  }

  key "legacy" {
    algorithms = ["HS256"]
    kid        = "legacy-1"
    secret     = env("JWT_SECRET")
  }

  key "partner" {
    algorithms = ["EdDSA"]
    pem_file   = "jwt.pub"
  }
}

limits {
  max_connections      = 20000
  per_ip_connections   = 50
  per_user_connections = 5
  handshake_rate       = "10/s"
  handshake_burst      = 20
  message_rate         = "600/m"
  message_burst        = 30
  byte_rate            = "256KiB/s"
  byte_burst           = "512KiB"
  rate_policy          = "close"
  max_message_size     = "32KiB"
  max_inflated_size    = "256KiB"
  trusted_proxies      = ["10.0.0.0/8", "192.168.1.7", "fd00::1/8"]
  idle_evict           = "10m"
  send_queue           = 128
  slow_consumer        = "drop"
}

heartbeat {
  interval = "30s"
  timeout  = "5s"
}

drain {
  window  = "10s"
  timeout = "55s"
}

log {
  level  = "debug"
  format = "json"
}

route "/ws/rooms/{room}" {
  subprotocols  = ["chat.v2", "chat.v1"]
  on_connect    = "/ws/connect"
  on_message    = "/ws/message"
  on_disconnect = "/ws/disconnect"
  on_error      = "close"
  max_in_flight = 4
  channels = [
    "room:${path.room}",
    "user:${claims.sub}",
    "org:${lower(claims.org)}",
    "topic:${lookup(query, "topic", "general")}",
  ]
}

route "/public" {
  auth       = "none"
  on_message = "/index.php?action=message"

  origins {
    allow_missing = true
  }
}

stream "news" {
  path          = "/events/news"
  channel       = "news"
  scope         = "local"
  reconnect_min = "1s"
  reconnect_max = "1m"
}

stream "inbox" {
  path          = "/users/${claims.sub}/events"
  reconnect_max = "10s"
}

cluster {
  node_id = "ws-1"

  redis {
    url    = env("REDIS_URL")
    prefix = "chat-prod"
  }
}
