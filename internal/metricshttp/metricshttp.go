// Package metricshttp serves a Prometheus endpoint as a bounded, read-only HTTP listener: what a scraper reads and nothing a client sends can hold much.
package metricshttp

import (
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"
)

// The bounds. The endpoints are not authenticated (Istio's 15020/15090 are not either): bind
// them to the pod's address, never to a public one.
const (
	MaxConns          = 16              // connections served at once; more wait in the backlog
	MaxHeaderBytes    = 8 << 10         // request line and headers
	ReadHeaderTimeout = 5 * time.Second // the request's headers (and its body: there is none)
	WriteTimeout      = 10 * time.Second
	IdleTimeout       = 30 * time.Second
)

// ReadOnly answers GET and HEAD with h, 405 otherwise.
func ReadOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Server returns an HTTP server for h (wrapped in ReadOnly) with the bounds above; serve it
// with Serve.
func Server(h http.Handler) *http.Server {
	return &http.Server{
		Handler: ReadOnly(h), MaxHeaderBytes: MaxHeaderBytes, ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout: ReadHeaderTimeout, WriteTimeout: WriteTimeout, IdleTimeout: IdleTimeout,
	}
}

// Serve serves hs on ln with at most MaxConns connections at once.
func Serve(hs *http.Server, ln net.Listener) error {
	return hs.Serve(netutil.LimitListener(ln, MaxConns))
}
