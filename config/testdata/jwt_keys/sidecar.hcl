backend {
  url = "http://127.0.0.1:3000"
}

jwt {
  sources = ["header", "cookie", "body"]
  leeway  = "1h"

  key "both" {
    algorithms = ["RS256"]
    secret     = "0123456789abcdef0123456789abcdef"
    jwks_url   = "https://idp.example.com/jwks.json"
  }

  key "confused" {
    algorithms = ["HS256", "none"]
    pem_file   = "../full/jwt.pub"
  }

  key "short" {
    algorithms   = ["HS512"]
    secret       = "too-short"
    jwks_refresh = "1m"
  }

  key "nothing" {
  }
}

route "/ws" {
}
