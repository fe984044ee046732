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

// replay makes the calls of the scenario's last step once more, through the ztunnels, and
// reports the first result that differs from what the step expects: traffic for a scraper that
// has to see a counter grow (a series whose first sample is already its total has no rate).
func (s *stack) replay(ctx context.Context) error {
	if len(s.sc.Steps) == 0 {
		return nil
	}
	for _, c := range s.sc.Steps[len(s.sc.Steps)-1].Calls {
		if c.Plaintext {
			continue
		}
		from, err := s.podIP(c.From)
		if err != nil {
			return err
		}
		w, err := s.workload(c.From)
		if err != nil {
			return err
		}
		res := curl(ctx, s.hosts[w.Node]+":15080", from, "", c.Method, c.URL, c.Data, "")
		if m := check(c, res); m != "" {
			return fmt.Errorf("replaying %s %s from %s: %s", c.Method, c.URL, c.From, m)
		}
	}
	return nil
}
