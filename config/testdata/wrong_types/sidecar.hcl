backend {
  url       = ["http://127.0.0.1:3000"]
  max_conns = "many"
  timeout   = null

  breaker {
    enabled  = "sometimes"
    failures = 2.5
  }
}

route "/ws" {
  auth         = "none"
  subprotocols = "chat"
  max_in_flight = 0
}
