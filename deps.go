package main

// Temporary: keeps the project's chosen dependencies in go.mod while the
// packages that use them are written. Replaced by main.go.
import (
	_ "github.com/MicahParks/jwkset"
	_ "github.com/MicahParks/keyfunc/v3"
	_ "github.com/VictoriaMetrics/metrics"
	_ "github.com/chromedp/chromedp"
	_ "github.com/coder/websocket"
	_ "github.com/fasthttp/websocket"
	_ "github.com/golang-jwt/jwt/v5"
	_ "github.com/hashicorp/hcl/v2"
	_ "github.com/hashicorp/hcl/v2/gohcl"
	_ "github.com/hashicorp/hcl/v2/hclsyntax"
	_ "github.com/redis/go-redis/v9"
	_ "github.com/sony/gobreaker/v2"
	_ "github.com/valyala/fasthttp"
	_ "github.com/zclconf/go-cty/cty"
	_ "github.com/zclconf/go-cty/cty/function"
	_ "golang.org/x/time/rate"
)

func main() {}
