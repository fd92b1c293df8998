backend {
  url            = "http://127.0.0.1:3000"
  signing_secret = env("WSIDECAR_TEST_UNSET")
}

admin {
  token = env("WSIDECAR_TEST_UNSET", "fallback-token-0123456789")
}

route "/ws" {
  auth = "none"
}
