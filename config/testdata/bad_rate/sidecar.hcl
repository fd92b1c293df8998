backend {
  url = "http://127.0.0.1:3000"
}

limits {
  handshake_rate = "20 per second"
  message_rate   = "100/day"
  byte_rate      = "1MiB"
  message_burst  = 0
}

route "/ws" {
  auth = "none"
}
