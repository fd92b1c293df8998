backend {
  url = "http://127.0.0.1:3000"
}

log {
  level  = "verbose"
  format = "xml"
}

route "/ws" {
  auth     = "none"
  on_error = "explode"
}
