package demo

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/goambient/goambient/internal/meshgraph"
)

// Target is a metrics endpoint of a running scenario, as a Prometheus scrape target.
type Target struct {
	Job  string // xdsserver, ztunnel, waypoint
	Name string // the node of a ztunnel, the Gateway of a waypoint
	Addr string // host:port
	Path string // /metrics or /stats/prometheus
}

// targets are the scenario's metrics endpoints: xdsserver, each ztunnel and the embedded
// waypoint (whose listener exists once it started; Prometheus sees it down until then).
func (s *stack) targets() []Target {
	t := []Target{{Job: "xdsserver", Name: "xdsserver", Addr: s.xdsHTTP, Path: "/metrics"}}
	for _, n := range s.sc.Nodes {
		t = append(t, Target{Job: "ztunnel", Name: n, Addr: s.hosts[n] + ":15020", Path: "/stats/prometheus"})
	}
	if s.wp != nil {
		t = append(t, Target{Job: "waypoint", Name: s.wp.gateway, Addr: s.hosts[""] + ":15020", Path: "/stats/prometheus"})
	}
	return t
}

// writeGraph reads the ztunnels' and the waypoint's metrics and writes the scenario's graph
// (meshctl graph --scrape) as a table to the output and as an HTML page in dir; it returns the
// page's path.
func (s *stack) writeGraph(ctx context.Context, dir string) (string, error) {
	var urls []string
	for _, t := range s.targets() {
		if t.Job == "xdsserver" || (t.Job == "waypoint" && s.wpProc == nil) {
			continue
		}
		urls = append(urls, "http://"+t.Addr+t.Path)
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	g, err := meshgraph.FromEndpoints(ctx, &http.Client{Timeout: 10 * time.Second}, urls)
	if err != nil {
		return "", err
	}
	g.WriteTable(s.out)
	var b bytes.Buffer
	if err := g.WriteHTML(&b, fmt.Sprintf("%s: %s (meshctl demo)", s.sc.Name, s.sc.Title)); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, s.sc.Name+".html")
	return path, os.WriteFile(path, b.Bytes(), 0o644)
}
