package main

import (
	"errors"
	"log/slog"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
)

// newRedisBroker is replaced by the Redis broker wiring when it lands.
func newRedisBroker(c config.Cluster, h bridge.Hub, logger *slog.Logger, set *metrics.Set) (bridge.Broker, error) {
	return nil, errors.New("cluster support is not built yet")
}
