package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/auth"
	"github.com/wsidecar/wsidecar/config"
	"github.com/wsidecar/wsidecar/limits"
	"github.com/wsidecar/wsidecar/proxy"
)

// certWatchEvery is how often the TLS files are checked for a rotation
// (cert-manager rewrites them in place); SIGHUP reloads at once.
const certWatchEvery = 10 * time.Second

// door holds the handshake guards built from the config (Origin, JWT,
// limits, TLS) and swaps them on reload.
type door struct {
	ctx    context.Context // ends at close: JWKS refreshes, sweeps, cert watch
	cancel context.CancelFunc
	log    *slog.Logger
	set    *metrics.Set

	limits *limits.Door
	gate   *proxy.Gate

	// certs is the reloader serving the listener's certificate; swapped
	// when a reload names other files. nil pointer: plain ws://.
	certs     atomic.Pointer[proxy.CertReloader]
	certFiles config.TLS // the files certs reads
	tlsCfg    *tls.Config

	mu        sync.Mutex         // serialises reload and close
	stopWatch context.CancelFunc // ends the current reloader's Watch
	closed    bool
}

// newDoor builds the door for cfg. A missing or mismatched certificate
// pair, a key file that does not load or an Origin pattern that does not
// compile is an error; nothing is left running then.
func newDoor(ctx context.Context, cfg *config.Config, logger *slog.Logger, set *metrics.Set) (*door, error) {
	ctx, cancel := context.WithCancel(ctx)
	d := &door{ctx: ctx, cancel: cancel, log: logger, set: set}
	d.limits = limits.NewDoor(cfg.Limits, limits.Options{Logger: logger, Metrics: set})

	v, err := d.verifier(cfg)
	if err != nil {
		cancel()
		return nil, err
	}
	d.gate, err = proxy.NewGate(policy(cfg, v), proxy.GateOptions{Limits: d.limits, Context: ctx, Logger: logger})
	if err != nil {
		if v != nil {
			v.Close()
		}
		cancel()
		return nil, err
	}
	if t := cfg.Listener.TLS; t != nil {
		cr, err := proxy.NewCertReloader(t.CertFile, t.KeyFile, logger)
		if err != nil {
			d.gate.Close()
			cancel()
			return nil, fmt.Errorf("listener tls: %w", err)
		}
		d.certs.Store(cr)
		d.certFiles = *t
		d.tlsCfg = cr.TLSConfig()
		// Through the door, not cr: a reload swaps in a new reloader while
		// the listener keeps this config.
		d.tlsCfg.GetCertificate = d.getCertificate
		d.watchCerts(cr)
	}
	go d.limits.Run(ctx)
	d.warnClosedRoutes(cfg)
	return d, nil
}

// verifier builds the token verifier for cfg's jwt block; nil without one.
func (d *door) verifier(cfg *config.Config) (*auth.Verifier, error) {
	if cfg.JWT == nil {
		return nil, nil
	}
	return auth.NewVerifier(d.ctx, *cfg.JWT, auth.VerifierOptions{Logger: d.log, Metrics: d.set})
}

func policy(cfg *config.Config, v *auth.Verifier) proxy.GatePolicy {
	return proxy.GatePolicy{Origins: cfg.Origins, Routes: cfg.Routes,
		TrustedProxies: cfg.Limits.TrustedProxies, Verifier: v}
}

// warnClosedRoutes says when secure-by-default Origin checking leaves a
// route open to nobody: no origins allowed and allow_missing off.
func (d *door) warnClosedRoutes(cfg *config.Config) {
	for _, path := range proxy.AdmitsNobody(policy(cfg, nil)) {
		d.log.Warn("route admits no client: its origins allow no browser origin and allow_missing is false",
			"route", path, "hint", `add origins { allow = ["https://app.example.com"] } or allow_missing = true for non-browser clients`)
	}
}

// guards returns the proxy's handshake stages.
func (d *door) guards() proxy.Door { return d.gate.Door() }

// tlsConfig returns the listener's TLS config, or nil for plain ws://.
func (d *door) tlsConfig() *tls.Config { return d.tlsCfg }

// watchCerts polls cr's files until the next reload replaces it or close.
func (d *door) watchCerts(cr *proxy.CertReloader) {
	if d.stopWatch != nil {
		d.stopWatch()
	}
	ctx, stop := context.WithCancel(d.ctx)
	d.stopWatch = stop
	go cr.Watch(ctx, certWatchEvery)
}

func (d *door) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	cr := d.certs.Load()
	if cr == nil {
		return nil, errors.New("no TLS certificate loaded")
	}
	return cr.GetCertificate(hello)
}

// reload applies a new config's origins, keys, limits and certificate; on
// error nothing changed. Everything that can fail is built first (Origin
// patterns, the new Verifier with its PEM and JWKS keys, the certificate
// pair), then swapped in; the old Verifier is closed after the swap. Open
// sockets are untouched; the listener's ws/wss choice and address need a
// restart.
func (d *door) reload(cfg *config.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("door closed")
	}
	v, err := d.verifier(cfg)
	if err != nil {
		return err
	}
	discard := func() {
		if v != nil {
			v.Close()
		}
	}

	// Same files: re-read them in place (a rotation cert-manager made
	// between two polls of Watch). Other files: read them into a new
	// reloader, swapped in only once everything else has been built.
	var next *proxy.CertReloader
	switch t := cfg.Listener.TLS; {
	case (t == nil) != (d.certs.Load() == nil):
		d.log.Warn("reload: adding or removing listener.tls needs a restart; keeping the listener as it is")
	case t != nil && *t == d.certFiles:
		if err := d.certs.Load().Reload(); err != nil {
			discard()
			return fmt.Errorf("reload listener tls (keeping the current certificate): %w", err)
		}
	case t != nil:
		if next, err = proxy.NewCertReloader(t.CertFile, t.KeyFile, d.log); err != nil {
			discard()
			return fmt.Errorf("reload listener tls (keeping the current certificate): %w", err)
		}
	}

	if err := d.gate.Set(policy(cfg, v)); err != nil {
		discard()
		return err
	}
	d.limits.Update(cfg.Limits)
	if next != nil {
		d.certs.Store(next)
		d.certFiles = *cfg.Listener.TLS
		d.watchCerts(next)
	}
	d.warnClosedRoutes(cfg)
	return nil
}

// close stops background work (JWKS refresh, certificate watch, sweeps).
func (d *door) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.closed = true
	d.cancel()
	d.gate.Close()
}
