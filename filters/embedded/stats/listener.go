package stats

import (
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
)

// The metrics listener's bounds: it serves only what a scraper reads, to anyone who can reach
// it (Istio's 15020/15090 are unauthenticated too), so nothing a client sends can hold much.
const (
	MaxConns          = 16              // connections served at once; more wait in the backlog
	MaxHeaderBytes    = 8 << 10         // request line and headers
	ReadHeaderTimeout = 5 * time.Second // the request's headers
	WriteTimeout      = 10 * time.Second
	IdleTimeout       = 30 * time.Second
	MaxScrapesAtOnce  = 4 // promhttp's MaxRequestsInFlight: more get 503
)

// Handler serves reg on /stats/prometheus and /metrics (GET or HEAD), 404 elsewhere, 405 for
// other methods.
func Handler(reg *prometheus.Registry) http.Handler {
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, MaxRequestsInFlight: MaxScrapesAtOnce, Timeout: WriteTimeout / 2})
	mux := http.NewServeMux()
	for _, p := range []string{"/stats/prometheus", "/metrics"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				w.Header().Set("Allow", "GET, HEAD")
				http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	return mux
}

// Server returns the metrics listener's HTTP server for reg, with the bounds above; serve it
// with Serve.
func Server(reg *prometheus.Registry) *http.Server {
	return &http.Server{
		Handler: Handler(reg), MaxHeaderBytes: MaxHeaderBytes, ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout: ReadHeaderTimeout, WriteTimeout: WriteTimeout, IdleTimeout: IdleTimeout,
	}
}

// Serve serves hs on ln with at most MaxConns connections at once.
func Serve(hs *http.Server, ln net.Listener) error {
	return hs.Serve(netutil.LimitListener(ln, MaxConns))
}
