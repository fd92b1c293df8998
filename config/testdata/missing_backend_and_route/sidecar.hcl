# Nothing to do: no backend, no route.
log {
  level = "info"
}
