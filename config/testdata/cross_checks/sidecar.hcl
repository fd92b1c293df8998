listener {
  address = "0.0.0.0:9090"
}

admin {
  address = "127.0.0.1:9090"
}

backend {
  url = "http://127.0.0.1:3000"
}

limits {
  max_message_size  = "2MiB"
  max_inflated_size = "1MiB"
}

drain {
  window = "30s"
}

stream "s" {
  path          = "/events"
  reconnect_min = "10s"
  reconnect_max = "1s"
}

route "/ws" {
  auth = "none"
}
