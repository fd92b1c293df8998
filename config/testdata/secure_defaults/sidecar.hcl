# Exposing the push API without a token, short secrets, spoofable headers.
admin {
  address = "0.0.0.0:9090"
}

backend {
  url             = "http://127.0.0.1:3000"
  signing_secret  = "secret"
  forward_headers = ["Cookie", "X-WS-User", "X-Forwarded-For"]
}

origins {
  allow = ["https://*.com", "app.example.com", "https://app.example.com/"]
}

route "/ws" {
  auth = "none"
}
