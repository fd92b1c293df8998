backend {
  url = "http://127.0.0.1:3000"
  timeout "5s"
}

route "/ws" {
  auth = "none"
