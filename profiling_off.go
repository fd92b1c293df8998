//go:build !benchprof

package main

import "github.com/valyala/fasthttp"

// withProfiling returns the admin handler unchanged: release builds have no
// pprof endpoint (see profiling_on.go for the benchmark build).
func withProfiling(h fasthttp.RequestHandler) fasthttp.RequestHandler { return h }
