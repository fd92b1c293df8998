backend {
  url = "http://127.0.0.1:3000"
}

limits {
  trusted_proxies = ["10.0.0.0/8", "10.0.0.0/33", "proxy.internal"]
}

route "/ws" {
  auth = "none"
}
