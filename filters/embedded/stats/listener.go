package stats

import (
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/goambient/goambient/internal/metricshttp"
)

// MaxScrapesAtOnce is promhttp's MaxRequestsInFlight: more scrapes at once get 503.
const MaxScrapesAtOnce = 4

// Handler serves reg on /stats/prometheus and /metrics, 404 elsewhere.
func Handler(reg *prometheus.Registry) http.Handler {
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, MaxRequestsInFlight: MaxScrapesAtOnce, Timeout: metricshttp.WriteTimeout / 2})
	mux := http.NewServeMux()
	mux.Handle("/stats/prometheus", h)
	mux.Handle("/metrics", h)
	return mux
}

// Server returns the metrics listener's HTTP server for reg, bounded and read-only
// (internal/metricshttp); serve it with Serve.
func Server(reg *prometheus.Registry) *http.Server { return metricshttp.Server(Handler(reg)) }

// Serve serves hs on ln with at most metricshttp.MaxConns connections at once.
func Serve(hs *http.Server, ln net.Listener) error { return metricshttp.Serve(hs, ln) }
