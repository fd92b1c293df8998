backend {
  url = "http://127.0.0.1:3000"
}

route "ws" {
  auth = "none"
}

route "/rooms/room-{id}" {
  auth = "none"
}

route "/a//b" {
  auth = "none"
}

route "/x/{1st}/{a}/{a}" {
  auth = "none"
}

route "/ok/{room}" {
  auth       = "none"
  on_message = "ws/message"
}
