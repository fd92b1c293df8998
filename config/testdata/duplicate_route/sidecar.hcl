backend {
  url = "http://127.0.0.1:3000"
}

route "/rooms/{room}" {
  auth = "none"
}

route "/rooms/{id}" {
  auth = "none"
}

stream "news" {
  path = "/events"
}

stream "news" {
  path = "/events/other"
}
