listener {
  handshake_timeout = "ten seconds"
}

heartbeat {
  interval = 30
  timeout  = "-5s"
}

backend {
  url = "http://127.0.0.1:3000"
}

route "/ws" {
  auth = "none"
}
