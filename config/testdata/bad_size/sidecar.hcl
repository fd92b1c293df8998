backend {
  url = "http://127.0.0.1:3000"
}

limits {
  max_message_size  = "64 kilobytes"
  max_inflated_size = "-1MiB"
}

listener {
  read_buffer_size = "2GiB"
}

route "/ws" {
  auth = "none"
}
