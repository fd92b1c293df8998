package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
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
	logger := newLogger(stderr, cfg.Log)
	app, err := start(ctx, cfg, logger)
	if err != nil {
		logger.Error("startup failed", "err", err)
		return exitFail
	}
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
	if _, err := config.Load(fs.Arg(0)); err != nil {
		printConfigError(stderr, err)
		return exitConfig
	}
	fmt.Fprintf(stdout, "%s: ok\n", fs.Arg(0))
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

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func newLogger(w io.Writer, c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// app is one running sidecar: its parts and how to stop them.
type app struct {
	cfg      *config.Config
	logger   *slog.Logger
	metrics  *metrics.Set
	door     *door
	webhooks *bridge.Webhooks
	hub      *proxy.Hub
	broker   bridge.Broker
	server   *proxy.Server
	admin    *fasthttp.Server
	streams  *bridge.Streams
	cancel   context.CancelFunc

	wsAddr, adminAddr string // bound addresses (the config may say port 0)
	drainReq          chan struct{}
	errc              chan error
}

func start(parent context.Context, cfg *config.Config, logger *slog.Logger) (*app, error) {
	ctx, cancel := context.WithCancel(parent)
	a := &app{cfg: cfg, logger: logger, metrics: metrics.NewSet(), cancel: cancel,
		drainReq: make(chan struct{}, 1), errc: make(chan error, 2)}
	a.metrics.NewGauge(fmt.Sprintf(`wsidecar_build_info{version=%q}`, buildVersion()), func() float64 { return 1 })

	var err error
	a.webhooks, err = bridge.NewWebhooks(cfg.Backend, bridge.WebhookOptions{Logger: logger, Metrics: a.metrics})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("backend: %w", err)
	}
	a.hub = proxy.NewHub(proxy.HubOptions{})
	if cfg.Cluster != nil {
		rb, err := newRedisBroker(*cfg.Cluster, a.hub, logger, a.metrics)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("cluster: %w", err)
		}
		a.broker = rb
	} else {
		a.broker = bridge.NewMemoryBroker(a.hub)
	}
	a.hub.SetWatcher(a.broker)

	a.door, err = newDoor(ctx, cfg, logger, a.metrics)
	if err != nil {
		cancel()
		return nil, err
	}
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
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("proxy: %w", err)
	}

	wsLn, err := net.Listen("tcp", cfg.Listener.Address)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("listen %s: %w", cfg.Listener.Address, err)
	}
	adminLn, err := net.Listen("tcp", cfg.Admin.Address)
	if err != nil {
		wsLn.Close()
		cancel()
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
	a.admin = &fasthttp.Server{Handler: adminAPI.Handler, Name: "wsidecar", ReadTimeout: 30 * time.Second,
		MaxRequestBodySize: adminMaxBody + 4096, NoDefaultServerHeader: true}

	a.streams = bridge.NewStreams(cfg.Backend.URL, cfg.Streams, a.broker, bridge.StreamOptions{Logger: logger, Metrics: a.metrics})
	go a.streams.Run(ctx)

	go func() { a.errc <- a.server.Serve(wsLn) }()
	go func() { a.errc <- a.admin.Serve(adminLn) }()
	logger.Info("wsidecar started", "listen", wsLn.Addr().String(), "admin", adminLn.Addr().String(),
		"backend", cfg.Backend.URL, "routes", len(cfg.Routes), "streams", len(cfg.Streams), "version", buildVersion())
	return a, nil
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
			a.logger.Info("signal received, draining", "signal", sig.String())
			return a.shutdown(sigs)
		case <-a.drainReq:
			a.logger.Info("drain requested over the admin API")
			return a.shutdown(sigs)
		case err := <-a.errc:
			a.logger.Error("listener failed", "err", err)
			a.cancel()
			return exitFail
		}
	}
}

// shutdown drains gracefully; a second terminating signal exits at once.
func (a *app) shutdown(sigs <-chan os.Signal) int {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.Drain.Timeout)
	defer cancel()
	done := make(chan int, 1)
	go func() {
		code := exitOK
		if err := a.server.Drain(ctx); err != nil {
			a.logger.Warn("drain did not finish", "err", err)
			code = exitFail
		}
		if err := a.webhooks.Flush(ctx); err != nil {
			a.logger.Warn("disconnect webhooks not all delivered", "err", err)
		}
		a.cancel()
		a.webhooks.Close()
		a.door.close()
		_ = a.broker.Close()
		_ = a.admin.Shutdown()
		done <- code
	}()
	for {
		select {
		case code := <-done:
			a.logger.Info("wsidecar stopped", "code", code)
			return code
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				continue
			}
			a.logger.Warn("second signal, exiting now", "signal", sig.String())
			return exitFail
		}
	}
}

// reload re-reads the config file; an invalid file keeps the running config.
func (a *app) reload() {
	cfg, err := config.Load(a.cfg.Path)
	if err != nil {
		var diags config.Diagnostics
		msg := err.Error()
		if errors.As(err, &diags) {
			var b strings.Builder
			_ = diags.Write(&b, false)
			msg = b.String()
		}
		a.logger.Error("reload rejected, keeping the running config", "file", a.cfg.Path, "diagnostics", msg)
		return
	}
	if err := a.door.reload(cfg); err != nil {
		a.logger.Error("reload rejected, keeping the running config", "file", a.cfg.Path, "err", err)
		return
	}
	if err := a.server.UpdateRoutes(cfg.Routes); err != nil {
		a.logger.Error("reload rejected: routes", "err", err)
		return
	}
	a.server.UpdateLimits(cfg.Limits)
	if err := a.webhooks.Update(cfg.Backend); err != nil {
		a.logger.Error("reload: backend settings rejected", "err", err)
	}
	a.streams.Update(cfg.Streams)
	a.cfg = cfg
	a.logger.Info("config reloaded", "file", cfg.Path)
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
