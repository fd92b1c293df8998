package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"reflect"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
	"github.com/wsidecar/wsidecar/proxy"
)

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer, sigs <-chan os.Signal) int {
	fs := newFlagSet("run", stderr)
	path := fs.String("config", envOr("WSIDECAR_CONFIG", "sidecar.hcl"), "config file")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	cfg, err := config.Load(*path)
	if err != nil {
		printConfigError(stderr, err)
		return exitConfig
	}
	level := new(slog.LevelVar)
	logger := newLogger(stderr, cfg.Log, level)
	app, err := start(ctx, cfg, logger)
	if err != nil {
		logger.Error("startup failed", "err", err)
		return exitFail
	}
	app.level = level
	return app.wait(sigs)
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("validate", stderr)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: wsidecar validate FILE")
		return exitConfig
	}
	// config.Validate writes the diagnostics, or a one-line summary; the
	// summary goes to stdout, problems to stderr.
	var out bytes.Buffer
	if err := config.Validate(fs.Arg(0), &out); err != nil {
		stderr.Write(out.Bytes())
		return exitConfig
	}
	stdout.Write(out.Bytes())
	return exitOK
}

// printConfigError prints HCL diagnostics with their source lines, or a
// plain error (e.g. the file cannot be read).
func printConfigError(w io.Writer, err error) {
	var diags config.Diagnostics
	if errors.As(err, &diags) {
		_ = diags.Write(w, false)
		return
	}
	fmt.Fprintf(w, "wsidecar: %v\n", err)
}

// configErrorText renders a config error for a log attribute.
func configErrorText(err error) string {
	var b strings.Builder
	printConfigError(&b, err)
	return strings.TrimSpace(b.String())
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// newLogger builds the process logger from the log block. The level lives
// in level so that a reload can change it; the format needs a restart.
func newLogger(w io.Writer, c config.Log, level *slog.LevelVar) *slog.Logger {
	level.Set(parseLevel(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// parseLevel maps the config's level names; config has validated them, so
// anything else is info.
func parseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}

// app is one running sidecar: its parts and how to stop them.
type app struct {
	cfg      *config.Config // the running config; a successful reload replaces it
	drainCfg config.Drain   // fixed at start: the proxy drains with these
	logger   *slog.Logger
	level    *slog.LevelVar // nil when the caller built the logger (tests)
	metrics  *metrics.Set
	door     *door
	webhooks *bridge.Webhooks
	hub      *proxy.Hub
	broker   bridge.Broker
	server   *proxy.Server
	admin    *fasthttp.Server
	ctx      context.Context // parent of background work; cancelled last
	cancel   context.CancelFunc

	// streams is the SSE consumer, for the life of the process: the proxy
	// reports every socket to it (per-connection streams), and a reload
	// moves it to a new backend URL in place.
	streams     *bridge.Streams
	streamsStop context.CancelFunc
	streamsDone chan struct{}

	reloadOK, reloadFailed *metrics.Counter
	lastReloadOK           atomic.Bool
	lastReloadAt           atomic.Int64 // unix seconds of the last successful (re)load

	wsAddr, adminAddr string // bound addresses (the config may say port 0)
	drainReq          chan struct{}
	errc              chan error
}

// start builds and starts every part for cfg. On error everything it had
// opened is closed again, so a caller may retry in the same process.
func start(parent context.Context, cfg *config.Config, logger *slog.Logger) (_ *app, err error) {
	ctx, cancel := context.WithCancel(parent)
	a := &app{cfg: cfg, drainCfg: cfg.Drain, logger: logger, metrics: metrics.NewSet(), ctx: ctx, cancel: cancel,
		drainReq: make(chan struct{}, 1), errc: make(chan error, 2)}
	// undo holds the closers of what is open so far, run in reverse when a
	// later step fails: a failed start leaks no listener and no goroutine.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			cancel()
		}
	}()
	a.registerMetrics()

	a.webhooks, err = bridge.NewWebhooks(cfg.Backend, bridge.WebhookOptions{Logger: logger, Metrics: a.metrics})
	if err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}
	undo = append(undo, a.webhooks.Close)
	a.hub = proxy.NewHub(proxy.HubOptions{})
	if cfg.Cluster != nil {
		rb, err := newRedisBroker(*cfg.Cluster, a.hub, logger, a.metrics)
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		a.broker = rb
	} else {
		a.broker = bridge.NewMemoryBroker(a.hub)
	}
	undo = append(undo, func() { _ = a.broker.Close() })
	a.hub.SetWatcher(a.broker)

	a.door, err = newDoor(ctx, cfg, logger, a.metrics)
	if err != nil {
		return nil, err
	}
	undo = append(undo, a.door.close)
	// The streams exist before the proxy, which reports sockets to them;
	// they run once everything is built (a socket reported before Run gets
	// its streams when Run starts).
	a.streams = bridge.NewStreams(cfg.Backend.URL, cfg.Streams, a.broker, bridge.StreamOptions{
		Logger: logger, Metrics: a.metrics, SigningSecret: cfg.Backend.SigningSecret})
	a.server, err = proxy.NewServer(proxy.Options{
		Door:           a.door.guards(),
		TLSConfig:      a.door.tlsConfig(),
		Listener:       cfg.Listener,
		Routes:         cfg.Routes,
		Limits:         cfg.Limits,
		Heartbeat:      cfg.Heartbeat,
		Drain:          cfg.Drain,
		Backend:        a.webhooks,
		Hub:            a.hub,
		Logger:         logger,
		Metrics:        a.metrics,
		ForwardHeaders: cfg.Backend.ForwardHeaders,
		NodeID:         nodeID(cfg),
		CallTimeout:    cfg.Backend.Timeout,
		ConnObserver:   a.streams,
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	undo = append(undo, func() { _ = a.server.Close() })

	wsLn, err := net.Listen("tcp", cfg.Listener.Address)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Listener.Address, err)
	}
	undo = append(undo, func() { _ = wsLn.Close() })
	adminLn, err := net.Listen("tcp", cfg.Admin.Address)
	if err != nil {
		return nil, fmt.Errorf("admin listen %s: %w", cfg.Admin.Address, err)
	}

	a.wsAddr, a.adminAddr = wsLn.Addr().String(), adminLn.Addr().String()

	adminAPI := bridge.NewAdmin(bridge.AdminOptions{
		Token:  cfg.Admin.Token,
		Broker: a.broker,
		Ready:  a.ready,
		Drain:  a.requestDrain,
		WriteMetrics: func(w io.Writer) {
			metrics.WriteProcessMetrics(w)
			a.metrics.WritePrometheus(w)
		},
		Metrics: a.metrics,
		Logger:  logger,
		MaxBody: adminMaxBody,
	})
	a.admin = &fasthttp.Server{Handler: withProfiling(adminAPI.Handler), Name: "wsidecar", ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute,
		MaxRequestBodySize: adminMaxBody + 4096, NoDefaultServerHeader: true,
		// Probes and scrapers keep connections alive; at shutdown they are
		// told to close so Shutdown does not wait on them.
		CloseOnShutdown: true}

	a.runStreams()
	a.lastReloadOK.Store(true)
	a.lastReloadAt.Store(time.Now().Unix())

	go func() { a.errc <- a.server.Serve(wsLn) }()
	go func() { a.errc <- a.admin.Serve(adminLn) }()
	logger.Info("wsidecar started", "listen", a.wsAddr, "admin", a.adminAddr,
		"backend", cfg.Backend.URL, "routes", len(cfg.Routes), "streams", len(cfg.Streams), "version", buildVersion())
	return a, nil
}

// registerMetrics registers the process-level series: build info and
// config reloads. The parts register their own.
func (a *app) registerMetrics() {
	a.metrics.NewGauge(`wsidecar_build_info{version="`+promLabel(buildVersion())+`",goversion="`+promLabel(runtime.Version())+`"}`,
		func() float64 { return 1 })
	a.reloadOK = a.metrics.NewCounter(`wsidecar_config_reloads_total{result="success"}`)
	a.reloadFailed = a.metrics.NewCounter(`wsidecar_config_reloads_total{result="failure"}`)
	a.metrics.NewGauge(`wsidecar_config_last_reload_successful`, func() float64 {
		if a.lastReloadOK.Load() {
			return 1
		}
		return 0
	})
	a.metrics.NewGauge(`wsidecar_config_last_reload_success_timestamp_seconds`, func() float64 {
		return float64(a.lastReloadAt.Load())
	})
}

// promLabel escapes a Prometheus label value (text format: \\, \" and \n).
func promLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// The proxy tells the SSE consumer about every socket (per-connection streams).
var _ proxy.ConnObserver = (*bridge.Streams)(nil)

// runStreams runs the SSE consumer until stopStreams.
func (a *app) runStreams() {
	ctx, stop := context.WithCancel(a.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.streams.Run(ctx)
	}()
	a.streamsStop, a.streamsDone = stop, done
}

// stopStreams stops the SSE consumer, per-connection streams included, and
// waits for it.
func (a *app) stopStreams() {
	a.streamsStop()
	<-a.streamsDone
}

func (a *app) ready() (bool, string) {
	if a.server.Draining() {
		return false, "draining"
	}
	return true, ""
}

func (a *app) requestDrain() {
	select {
	case a.drainReq <- struct{}{}:
	default:
	}
}

// wait serves until a signal or a drain request, then drains and returns
// the exit code.
func (a *app) wait(sigs <-chan os.Signal) int {
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				a.reload()
				continue
			}
			a.logger.Info("signal received, draining", "signal", sig.String(), "timeout", a.drainCfg.Timeout)
			return a.shutdown(sigs)
		case <-a.drainReq:
			a.logger.Info("drain requested over the admin API", "timeout", a.drainCfg.Timeout)
			return a.shutdown(sigs)
		case err := <-a.errc:
			// A listener died under us: no graceful drain is possible for
			// new clients, but the open sockets and queued disconnects
			// still get one, bounded by the drain timeout.
			a.logger.Error("listener failed, shutting down", "err", err)
			a.shutdown(sigs)
			return exitFail
		}
	}
}

// shutdown drains gracefully within drain.timeout; a second terminating
// signal exits at once (the caller exits the process).
func (a *app) shutdown(sigs <-chan os.Signal) int {
	deadline := time.Now().Add(a.drainCfg.Timeout)
	done := make(chan int, 1)
	go func() { done <- a.stop(deadline) }()
	for {
		select {
		case code := <-done:
			a.logger.Info("wsidecar stopped", "code", code)
			return code
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				a.logger.Info("reload ignored while draining")
				continue
			}
			a.logger.Warn("second signal, exiting now", "signal", sig.String())
			return exitFail
		}
	}
}

// stop takes the parts down in dependency order and reports the exit code:
// 0 when every socket was drained and every disconnect webhook delivered
// before deadline.
//
//  1. Drain: handshakes get 503 + Retry-After and /readyz fails from the
//     first instant; sockets get 1001 spread over drain.window. The WS
//     listener stays open meanwhile so late clients get an answer that
//     tells them to retry elsewhere, not a refused connection.
//  2. Close the WS listener and anything left.
//  3. Stop the SSE streams (nothing left to feed).
//  4. Flush the disconnect webhooks the closes queued, then stop the
//     webhook client, the door and the broker.
//  5. Close the admin listener last: /readyz answers 503 during all of the
//     above, and the backend can push to sockets until they are closed.
func (a *app) stop(deadline time.Time) int {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	code := exitOK
	if err := a.server.Drain(ctx); err != nil {
		a.logger.Warn("drain did not finish", "err", err)
		code = exitFail
	}
	if err := a.server.Close(); err != nil {
		a.logger.Warn("closing the WebSocket listener", "err", err)
	}
	a.stopStreams()
	if err := a.webhooks.Flush(ctx); err != nil {
		a.logger.Warn("disconnect webhooks not all delivered", "err", err)
		code = exitFail
	}
	a.webhooks.Close()
	a.door.close()
	if err := a.broker.Close(); err != nil {
		a.logger.Warn("closing the broker", "err", err)
	}
	actx, acancel := context.WithTimeout(context.Background(), 2*time.Second)
	if err := a.admin.ShutdownWithContext(actx); err != nil {
		a.logger.Warn("closing the admin listener", "err", err)
	}
	acancel()
	a.cancel()
	return code
}

// reload re-reads the config file and applies what can change at runtime:
// routes, limits, origins, JWT keys and TLS certificate (the door), backend
// URL, timeout, signing secret and forwarded
// headers, streams and the log level. An invalid file, or a part that
// refuses the new config, keeps the running config: parts already switched
// are switched back. Settings that need a restart are named in a warning
// and keep their running values.
func (a *app) reload() {
	if a.server.Draining() {
		a.logger.Info("reload ignored while draining")
		return
	}
	path := a.cfg.Path
	defer func() {
		// A reload must never take 100k sockets down with it: a panic in
		// a part's reload is logged and the process keeps serving.
		if r := recover(); r != nil {
			a.reloadFailed.Inc()
			a.lastReloadOK.Store(false)
			a.logger.Error("reload panicked; the running config may be partly replaced, restart to be sure",
				"file", path, "panic", fmt.Sprint(r))
		}
	}()
	cfg, err := config.Load(path)
	if err != nil {
		a.reloadRejected(path, "invalid config", configErrorText(err))
		return
	}
	old := a.cfg
	if err := a.server.UpdateRoutes(cfg.Routes); err != nil {
		a.reloadRejected(path, "routes refused", err.Error())
		return
	}
	if err := a.webhooks.Update(cfg.Backend); err != nil {
		a.revertRoutes(old)
		a.reloadRejected(path, "backend settings refused", err.Error())
		return
	}
	if err := a.door.reload(cfg); err != nil {
		a.revertRoutes(old)
		if rerr := a.webhooks.Update(old.Backend); rerr != nil {
			a.logger.Error("reload: restoring the backend settings failed", "err", rerr)
		}
		a.reloadRejected(path, "door refused the config", err.Error())
		return
	}
	// Nothing below can fail.
	a.server.UpdateLimits(cfg.Limits)
	a.server.UpdateCallTimeout(cfg.Backend.Timeout)
	// Backend first, so that streams the update starts go to the new URL;
	// the ones already open reconnect there, keeping their Last-Event-ID.
	a.streams.SetBackend(cfg.Backend.URL, cfg.Backend.SigningSecret)
	a.streams.Update(cfg.Streams)
	fixed := restartNeeded(old, cfg)
	if len(fixed) > 0 {
		a.logger.Warn("config reloaded, but these settings need a restart and keep their running values",
			"settings", strings.Join(fixed, ", "))
	}
	a.cfg = cfg
	a.reloadOK.Inc()
	a.lastReloadOK.Store(true)
	a.lastReloadAt.Store(time.Now().Unix())
	a.logger.Info("config reloaded", "file", path, "routes", len(cfg.Routes), "streams", len(cfg.Streams))
	// Last, so that the line above shows at the level the operator had.
	if a.level != nil {
		a.level.Set(parseLevel(cfg.Log.Level))
	}
}

// reloadRejected logs a refused reload with its diagnostics and counts it.
func (a *app) reloadRejected(path, why, detail string) {
	a.reloadFailed.Inc()
	a.lastReloadOK.Store(false)
	a.logger.Error("reload rejected, keeping the running config", "file", path, "reason", why, "diagnostics", detail)
}

func (a *app) revertRoutes(old *config.Config) {
	if err := a.server.UpdateRoutes(old.Routes); err != nil {
		a.logger.Error("reload: restoring the routes failed", "err", err)
	}
}

// restartNeeded names the settings that differ between old and cfg but are
// fixed for the life of the process.
func restartNeeded(old, cfg *config.Config) []string {
	var out []string
	diff := func(name string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			out = append(out, name)
		}
	}
	ol, nl := old.Listener, cfg.Listener
	ol.TLS, nl.TLS = nil, nil // certificate files are the door's to reload
	diff("listener", ol, nl)
	diff("admin", old.Admin, cfg.Admin)
	diff("backend.max_conns", old.Backend.MaxConns, cfg.Backend.MaxConns)
	diff("backend.breaker", old.Backend.Breaker, cfg.Backend.Breaker)
	diff("backend.disconnect_queue", old.Backend.DisconnectQueue, cfg.Backend.DisconnectQueue)
	diff("backend.disconnect_retry_max", old.Backend.DisconnectRetryMax, cfg.Backend.DisconnectRetryMax)
	diff("heartbeat", old.Heartbeat, cfg.Heartbeat)
	diff("drain", old.Drain, cfg.Drain)
	diff("log.format", old.Log.Format, cfg.Log.Format)
	diff("cluster", old.Cluster, cfg.Cluster)
	return out
}

// adminMaxBody caps a push request body (the message plus its JSON).
const adminMaxBody = 1 << 20

// nodeID is the cluster node id, or "" (a random one) for a single replica.
func nodeID(cfg *config.Config) string {
	if cfg.Cluster != nil {
		return cfg.Cluster.NodeID
	}
	return ""
}
