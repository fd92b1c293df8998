package proxy

import "github.com/VictoriaMetrics/metrics"

// serverMetrics are the series a Server updates. Hot-path counters are
// resolved once here; nothing on the frame path formats a metric name.
// Handshake refusals (wsidecar_handshake_rejections_total{reason}) and
// per-socket rate refusals (wsidecar_message_rejections_total{reason}) are
// counted by the admission state, limits.Door, so that each family has one
// owner.
type serverMetrics struct {
	set *metrics.Set

	framesIn  *metrics.Counter // client → proxy data messages
	bytesIn   *metrics.Counter // their payload bytes
	framesOut *metrics.Counter // proxy → client data messages written
	bytesOut  *metrics.Counter // their payload bytes
	dropped   *metrics.Counter // messages dropped because a send queue was full
	slowClose *metrics.Counter // sockets closed 1013 as slow consumers
	draining  *metrics.Gauge   // 1 while draining
	msgErrors *metrics.Counter // failed message webhooks
}

func newServerMetrics(set *metrics.Set) *serverMetrics {
	return &serverMetrics{
		set:       set,
		framesIn:  set.GetOrCreateCounter("wsidecar_frames_in_total"),
		bytesIn:   set.GetOrCreateCounter("wsidecar_bytes_in_total"),
		framesOut: set.GetOrCreateCounter("wsidecar_frames_out_total"),
		bytesOut:  set.GetOrCreateCounter("wsidecar_bytes_out_total"),
		dropped:   set.GetOrCreateCounter("wsidecar_send_queue_dropped_total"),
		slowClose: set.GetOrCreateCounter("wsidecar_slow_consumer_closes_total"),
		draining:  set.GetOrCreateGauge("wsidecar_draining", nil),
		msgErrors: set.GetOrCreateCounter("wsidecar_message_webhook_errors_total"),
	}
}
