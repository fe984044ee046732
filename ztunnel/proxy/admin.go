package proxy

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/goambient/goambient/internal/metricshttp"
)

func (p *Proxy) httpServe(h http.Handler) func(net.Listener) {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	p.mu.Lock()
	p.http = append(p.http, hs)
	p.mu.Unlock()
	return func(ln net.Listener) { hs.Serve(ln) }
}

// metricsServe serves the metrics on a bounded, read-only listener (internal/metricshttp):
// 15020 listens on every address, for Prometheus.
func (p *Proxy) metricsServe(h http.Handler) func(net.Listener) {
	hs := metricshttp.Server(h)
	p.mu.Lock()
	p.http = append(p.http, hs)
	p.mu.Unlock()
	return func(ln net.Listener) { metricshttp.Serve(hs, ln) }
}

// readyHandler serves /healthz/ready: 200 once the state is loaded and the listeners are up.
func (p *Proxy) readyHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !p.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

// adminHandler serves /config_dump (the state, in the --config-file format, and the
// certificates held, in Istio's ztunnel shape) and pprof.
func (p *Proxy) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/config_dump", func(w http.ResponseWriter, _ *http.Request) {
		b, err := p.cfg.Store.Load().ConfigDump()
		if err == nil { // and the certificates held, as Istio's ztunnel (never a key)
			var doc map[string]json.RawMessage
			if err = json.Unmarshal(b, &doc); err == nil {
				doc["certificates"], _ = json.Marshal(p.cfg.Identity.DumpCertificates())
				b, err = json.MarshalIndent(doc, "", "  ")
			}
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
