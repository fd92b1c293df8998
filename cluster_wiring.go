package main

import (
	"log/slog"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
)

// newRedisBroker starts the Redis pub/sub broker that shares fan-out between
// replicas (the cluster block).
func newRedisBroker(c config.Cluster, h bridge.Hub, logger *slog.Logger, set *metrics.Set) (bridge.Broker, error) {
	return bridge.NewRedisBroker(c, h, bridge.RedisOptions{Logger: logger, Metrics: set})
}
