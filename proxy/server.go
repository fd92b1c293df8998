package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/wsidecar/wsidecar/config"
	"github.com/wsidecar/wsidecar/limits"
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("proxy: server closed")

// Server is the client-facing WebSocket listener: it runs the handshake
// pipeline, upgrades, and owns every socket it upgraded until it closes.
type Server struct {
	opts    Options
	log     *slog.Logger
	m       *serverMetrics
	hub     *Hub
	backend Backend
	ids     *idGen
	now     func() time.Time
	epoch   time.Time // origin of the monotonic clock used for socket timing

	callTimeout atomic.Int64 // ns; bounds each Connect and Message call (UpdateCallTimeout)
	retryAfter  time.Duration
	compression bool
	forward     []string
	interval    time.Duration
	hbTimeout   time.Duration

	routes atomic.Pointer[routeTable]
	limits atomic.Pointer[limitsSnap]

	upgrader  websocket.FastHTTPUpgrader
	writePool sync.Pool // shared write buffers: idle sockets hold none
	readBufs  sync.Pool // *[]byte scratch for reading messages
	rings     sync.Pool // *ring send queues, held only while a socket has frames queued
	fs        *fasthttp.Server

	base   context.Context // parent of every backend call; cancelled by Close
	cancel context.CancelFunc

	// adm is the admission state (Door.Limits, or a private one when ownAdm):
	// the default global cap, rejection counting and per-socket rates.
	adm     *limits.Door
	ownAdm  bool
	logGate *limits.LogGate // one refusal line per reason per client per interval

	draining atomic.Bool
	mu       sync.RWMutex // guards closed against socket registration
	closed   bool
	track    tracker  // registered sockets whose teardown has not finished
	pending  sync.Map // net.Conn → *pendingUpgrade, between Upgrade and hijack

	lnMu sync.Mutex
	ln   net.Listener

	hbOnce    sync.Once
	hbStop    chan struct{}
	hbDone    sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// NewServer checks opts, fills defaults and compiles the routes. The server
// accepts nothing until Serve or ListenAndServe.
func NewServer(opts Options) (*Server, error) {
	s := &Server{opts: opts, log: opts.Logger, backend: opts.Backend, hub: opts.Hub, now: opts.Now}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	set := opts.Metrics
	if set == nil {
		set = metrics.NewSet()
	}
	s.m = newServerMetrics(set)
	if s.hub == nil {
		s.hub = NewHub(HubOptions{})
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.epoch = time.Now()
	node := opts.NodeID
	if node == "" {
		var err error
		if node, err = randomNodeID(); err != nil {
			return nil, err
		}
	}
	ids, err := newIDGen(node)
	if err != nil {
		return nil, err
	}
	s.ids = ids
	rt, err := compileRoutes(opts.Routes, set)
	if err != nil {
		return nil, err
	}
	s.routes.Store(rt)
	s.limits.Store(snapLimits(opts.Limits))
	s.adm = opts.Door.Limits
	if s.adm == nil {
		s.adm = limits.NewDoor(opts.Limits, limits.Options{Logger: s.log, Metrics: set})
		s.ownAdm = true
	}
	s.logGate = limits.NewLogGate(orDefault(opts.RejectLogInterval, defaultRejectLogInterval), 0, nil)

	s.callTimeout.Store(int64(orDefault(opts.CallTimeout, defaultCallTimeout)))
	s.retryAfter = orDefault(opts.RetryAfter, defaultRetryAfter)
	s.opts.WriteTimeout = orDefault(opts.WriteTimeout, defaultWriteTimeout)
	s.opts.CloseTimeout = orDefault(opts.CloseTimeout, defaultCloseTimeout)
	s.interval = orDefault(opts.Heartbeat.Interval, defaultInterval)
	s.hbTimeout = orDefault(opts.Heartbeat.Timeout, defaultTimeout)
	s.opts.Drain.Window = orDefault(opts.Drain.Window, defaultDrainWindow)
	s.opts.Drain.Timeout = orDefault(opts.Drain.Timeout, defaultDrainTimeout)
	s.compression = opts.Listener.Compression
	s.forward = append([]string(nil), opts.ForwardHeaders...)
	s.base, s.cancel = context.WithCancel(context.Background())
	s.hbStop = make(chan struct{})
	s.readBufs.New = func() any { b := make([]byte, 0, 1024); return &b }
	s.rings.New = newRing

	l := opts.Listener
	hsTimeout := orDefault(l.HandshakeTimeout, defaultHandshakeTimeout)
	s.upgrader = websocket.FastHTTPUpgrader{
		ReadBufferSize:    int(orDefault(l.ReadBufferSize, defaultIOBufferSize)),
		WriteBufferSize:   int(orDefault(l.WriteBufferSize, defaultIOBufferSize)),
		WriteBufferPool:   &s.writePool,
		EnableCompression: l.Compression,
		// The Origin stage has already decided; the library's own check
		// would refuse what an allowlist admits.
		CheckOrigin: func(*fasthttp.RequestCtx) bool { return true },
		Error: func(ctx *fasthttp.RequestCtx, status int, _ error) {
			writeRejection(ctx, &Rejection{Status: status, Reason: "bad_handshake", Message: "bad WebSocket handshake"})
		},
	}
	s.fs = &fasthttp.Server{
		Handler:      s.handle,
		ErrorHandler: s.handleError,
		ConnState:    s.connState,
		Logger:       fasthttpLogger{s.log},
		Name:         "wsidecar",
		// The read buffer bounds the handshake's header size; it is pooled
		// and, with ReduceMemoryUsage, released before the hijack, so an
		// open socket does not keep it.
		ReadBufferSize:     int(orDefault(l.MaxHeaderBytes, defaultMaxHeaderBytes)),
		WriteBufferSize:    int(orDefault(l.WriteBufferSize, defaultIOBufferSize)),
		ReadTimeout:        hsTimeout,
		WriteTimeout:       hsTimeout,
		IdleTimeout:        hsTimeout,
		MaxRequestBodySize: 4 << 10,
		// Workers serve handshakes only; after a reconnect storm their
		// grown stacks should not linger 10s (the default).
		MaxIdleWorkerDuration:        time.Second,
		ReduceMemoryUsage:            true,
		KeepHijackedConns:            true, // sockets outlive the hijack handler
		DisablePreParseMultipartForm: true,
		SecureErrorLogMessage:        true,
		NoDefaultContentType:         true,
		CloseOnShutdown:              true,
	}
	return s, nil
}

func orDefault[T int64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Hub returns the hub holding this server's sockets.
func (s *Server) Hub() *Hub { return s.hub }

// ListenAndServe listens on Listener.Address and serves until Close.
func (s *Server) ListenAndServe() error {
	addr := s.opts.Listener.Address
	if addr == "" {
		addr = "0.0.0.0:8080"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("proxy: listening on %s: %w", addr, err)
	}
	return s.Serve(ln)
}

// Serve accepts connections on ln (wrapped in TLS when Options.TLSConfig is
// set) until Close; it then returns nil.
func (s *Server) Serve(ln net.Listener) error {
	if ln == nil {
		return errors.New("proxy: Serve needs a listener")
	}
	if s.isClosed() {
		_ = ln.Close()
		return ErrServerClosed
	}
	if s.opts.TLSConfig != nil {
		ln = tls.NewListener(ln, s.opts.TLSConfig)
	}
	s.lnMu.Lock()
	s.ln = ln
	s.lnMu.Unlock()
	s.hbOnce.Do(func() {
		s.hbDone.Add(1)
		go s.heartbeatLoop()
	})
	if err := s.fs.Serve(ln); err != nil {
		return fmt.Errorf("proxy: serving: %w", err)
	}
	return nil
}

// Addr returns the address Serve listens on, or nil before Serve.
func (s *Server) Addr() net.Addr {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// UpdateRoutes swaps the route table (SIGHUP). Open sockets keep the route
// they were opened on.
func (s *Server) UpdateRoutes(routes []config.Route) error {
	rt, err := compileRoutes(routes, s.m.set)
	if err != nil {
		return err
	}
	s.routes.Store(rt)
	return nil
}

// UpdateCallTimeout changes the bound on each backend call (SIGHUP);
// calls already running keep theirs. Zero restores the default.
func (s *Server) UpdateCallTimeout(d time.Duration) {
	s.callTimeout.Store(int64(orDefault(d, defaultCallTimeout)))
}

// UpdateLimits swaps the limits (SIGHUP). Open sockets keep the size
// limits, send queue and policies they were opened with; message and byte
// rates follow the admission state (limits.Door), so they apply to open
// sockets at once. A Door.Limits passed in Options is updated by its owner,
// not here; the server's private one is updated here.
func (s *Server) UpdateLimits(l config.Limits) {
	s.limits.Store(snapLimits(l))
	if s.ownAdm {
		s.adm.Update(l)
	}
}

// Draining reports whether the server has stopped admitting sockets (Drain
// or Close). Readiness probes fail while it is true.
func (s *Server) Draining() bool { return s.draining.Load() }

func (s *Server) isClosed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.closed
}

func (s *Server) mono() int64 { return int64(time.Since(s.epoch)) + 1 }

func (s *Server) writeTimeout() time.Duration { return s.opts.WriteTimeout }
func (s *Server) closeTimeout() time.Duration { return s.opts.CloseTimeout }

// connLog returns the logger for one socket; built on demand so idle
// sockets do not each hold a logger.
func (s *Server) connLog(c *conn) *slog.Logger { return s.log.With("conn", c.id) }

// Close stops accepting, cuts every socket this server upgraded (the
// backend still gets each disconnect) and waits for them to finish. Hijacked
// connections escape fasthttp's Shutdown, so they are tracked here.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		if s.draining.CompareAndSwap(false, true) {
			s.m.draining.Set(1)
		}
		// Abort backend calls first so handshakes waiting on a connect
		// webhook return and fasthttp's Shutdown can finish.
		s.cancel()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.fs.ShutdownWithContext(sctx); err != nil {
			s.closeErr = fmt.Errorf("proxy: shutting down listener: %w", err)
		}
		cancel()
		s.hub.each(func(c *conn) {
			if c.srv == s {
				c.kill(websocket.CloseGoingAway, "server closed")
			}
		})
		close(s.hbStop)
		s.hbDone.Wait()
		select {
		case <-s.track.wait():
		case <-time.After(10 * time.Second):
			if s.closeErr == nil {
				s.closeErr = errors.New("proxy: sockets still closing after 10s")
			}
		}
	})
	return s.closeErr
}

// tracker counts live sockets and lets callers wait for zero without a
// goroutine; unlike sync.WaitGroup it allows adds while someone waits.
type tracker struct {
	mu   sync.Mutex
	n    int
	zero chan struct{}
}

func (t *tracker) add() {
	t.mu.Lock()
	t.n++
	t.mu.Unlock()
}

func (t *tracker) done() {
	t.mu.Lock()
	t.n--
	if t.n == 0 && t.zero != nil {
		close(t.zero)
		t.zero = nil
	}
	t.mu.Unlock()
}

// wait returns a channel closed when the count is zero.
func (t *tracker) wait() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	if t.zero == nil {
		t.zero = make(chan struct{})
	}
	return t.zero
}

// fasthttpLogger routes fasthttp's own messages to slog at debug level.
type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug(fmt.Sprintf(format, args...), "component", "fasthttp")
}
