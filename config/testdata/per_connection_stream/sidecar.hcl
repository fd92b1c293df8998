backend {
  url = "http://127.0.0.1:3000"
}

route "/ws" {
  auth = "none"
}

# A per-connection stream sends its events to its own socket: channel,
# prefix and scope have nothing to act on.
stream "inbox" {
  path    = "/users/${claims.sub}/events"
  channel = "inbox"
  prefix  = "user:"
  scope   = "local"
}

# Interpolated values are percent-encoded, so the leading "/" must be
# literal.
stream "whole" {
  path = "${header["x-events-path"]}"
}

stream "relative" {
  path = "users/${query.user}/events"
}

# Fine: a literal start, values where segments go.
stream "ok" {
  path = "/users/${lookup(query, "user", "nobody")}/events?since=${lookup(query, "since", "0")}"
}
