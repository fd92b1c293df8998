backend {
  url = "http://127.0.0.1:3000"
}

route "/ws" {
  auth = "none"
}
