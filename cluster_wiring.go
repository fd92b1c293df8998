package main

import (
	"log/slog"
	"sync"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"github.com/wsidecar/wsidecar/bridge"
	"github.com/wsidecar/wsidecar/config"
)

// newRedisBroker starts the Redis pub/sub broker that shares fan-out between
// replicas (the cluster block). go-redis reports failed dials through a
// process-wide logger that writes to stderr; during a Redis outage that is a
// line per retry, so it is routed to our logger at debug level (the
// broker's own state changes are logged, rate-limited, at warn).
func newRedisBroker(c config.Cluster, h bridge.Hub, logger *slog.Logger, set *metrics.Set) (bridge.Broker, error) {
	// Once, before any Redis client exists: go-redis reads the logger
	// unsynchronised from its own goroutines.
	redisLoggerOnce.Do(func() { redis.SetLogger(bridge.RedisLogger{Logger: logger}) })
	return bridge.NewRedisBroker(c, h, bridge.RedisOptions{Logger: logger, Metrics: set})
}

var redisLoggerOnce sync.Once
