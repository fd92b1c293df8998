//go:build benchprof

package main

import (
	"net/http/pprof"
	"strings"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// withProfiling adds net/http/pprof under /debug/pprof/ on the admin
// listener. Only `go build -tags benchprof` (used by `go run ./bench
// -profile DIR`) includes it, so profiles are taken from the real wiring.
func withProfiling(h fasthttp.RequestHandler) fasthttp.RequestHandler {
	index := fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Index)
	named := map[string]fasthttp.RequestHandler{
		"cmdline": fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Cmdline),
		"profile": fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Profile),
		"symbol":  fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Symbol),
		"trace":   fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Trace),
	}
	return func(ctx *fasthttp.RequestCtx) {
		name, ok := strings.CutPrefix(string(ctx.Path()), "/debug/pprof/")
		if !ok {
			h(ctx)
			return
		}
		if f, ok := named[name]; ok {
			f(ctx)
			return
		}
		index(ctx) // serves the named profiles (heap, goroutine, …) too
	}
}
