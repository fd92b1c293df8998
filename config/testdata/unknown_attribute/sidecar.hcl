listener {
  adress = "0.0.0.0:8080"
}

backend {
  url = "http://127.0.0.1:3000"
}

listner {
}

route "/ws" {
  auth = "none"
}
