# No jwt block: routes must say auth = "none" explicitly.
backend {
  url = "http://127.0.0.1:3000"
}

route "/ws" {
  on_message = "/ws/message"
}

route "/admin" {
  auth = "jwt"
}
