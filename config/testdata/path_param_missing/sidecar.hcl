backend {
  url = "http://127.0.0.1:3000"
}

route "/rooms/{room}" {
  auth     = "none"
  channels = ["room:${path.rom}", "tenant:${header["X-Tenant"]}"]
}

route "/lobby" {
  auth     = "none"
  channels = ["lobby:${path.room}", "x:${foo.bar}", "u:${claims.sub}", "${upper(query.x)}", "${md5(query.x)}"]
}

route "/single" {
  auth     = "none"
  channels = "room:${query.room}"
}
