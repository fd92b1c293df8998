backend {
  url = "ftp://files.example.com"
}

jwt {
  key "idp" {
    algorithms = ["RS256"]
    jwks_url   = "http://idp.example.com/jwks.json"
  }
}

cluster {
  redis {
    url = "http://127.0.0.1:6379"
  }
}

route "/ws" {
}
