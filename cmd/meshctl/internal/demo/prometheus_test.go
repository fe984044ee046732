package demo

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goambient/goambient/filters/istiostats"
	"github.com/goambient/goambient/internal/meshgraph"
)

// promProc is a Prometheus server the test started.
type promProc struct {
	cmd  *exec.Cmd
	url  string
	done chan struct{}
	log  strings.Builder
}

// freePort is a loopback port nothing listens on now (Prometheus takes an address, not a
// socket): bound to :0 and released.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startPrometheus runs Debian's prometheus with a config scraping targets every second.
func startPrometheus(t *testing.T, bin, dir string, targets []Target) *promProc {
	t.Helper()
	var cfg strings.Builder
	cfg.WriteString("global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\nscrape_configs:\n")
	for _, tg := range targets {
		fmt.Fprintf(&cfg, "- job_name: %s-%s\n  metrics_path: %s\n  static_configs: [{targets: [%q], labels: {app: %q}}]\n"+
			"  metric_relabel_configs: [%s]\n", tg.Job, strings.ReplaceAll(tg.Name, "/", "-"), tg.Path, tg.Addr, tg.Job, istiostats.PrometheusRelabel)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; ; attempt++ {
		addr := freePort(t)
		p := &promProc{url: "http://" + addr, done: make(chan struct{})}
		p.cmd = exec.Command(bin, "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, fmt.Sprintf("data%d", attempt)),
			"--web.listen-address="+addr, "--log.level=warn")
		p.cmd.Stdout, p.cmd.Stderr = &p.log, &p.log
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.cmd.Wait(); close(p.done) }()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-p.done:
				deadline = time.Time{}
				continue
			default:
			}
			if resp, err := http.Get(p.url + "/-/ready"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return p
				}
			}
			time.Sleep(100 * time.Millisecond) // polling for readiness
		}
		p.stop()
		if attempt == 2 {
			t.Fatalf("prometheus did not start:\n%s", p.log.String())
		}
	}
}

func (p *promProc) stop() {
	p.cmd.Process.Kill()
	<-p.done
}

// scrapedAfter waits until Prometheus has scraped every ztunnel and waypoint target after t.
func (p *promProc) scrapedAfter(ctx context.Context, t time.Time) error {
	c := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		rows, err := meshgraph.Instant(ctx, c, p.url, `min(timestamp(up{app=~"ztunnel|waypoint"} == 1))`, time.Now())
		if err == nil && len(rows) == 1 && rows[0].Value > float64(t.Unix()) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no scrape of every target after %v: %v %v", t, rows, err)
		}
		time.Sleep(200 * time.Millisecond) // polling Prometheus
	}
}

// TestKialiQueriesOnPrometheus plays handson and bookinfo-lite with the real binaries while
// Debian's Prometheus scrapes xdsserver, both ztunnels and the embedded waypoint every second;
// after each scenario its last step's calls are made three more times (a counter's first sample
// gives no rate), then the PromQL queries Kiali's graph issues (meshgraph.KialiQueries, from
// kiali/kiali, named in meshgraph.KialiSource) return the scenario's edges: TCP edges between
// its workloads through their Services, HTTP edges through the waypoint with the 403s in
// response_code, and mutual_tls on every edge from Kiali's security-policy query.
func TestKialiQueriesOnPrometheus(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus is not installed (Debian: apt-get install prometheus): Kiali's queries are not checked against a real Prometheus")
	}
	if testing.Short() {
		t.Skip("-short: builds the binaries and plays two scenarios")
	}
	root, err := FindModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bins, err := Build(root, filepath.Join(dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	if e := bins.Err["waypoint"]; e != nil {
		t.Fatalf("the embedded waypoint did not build: %v", e)
	}
	namespaces := map[string][]string{"handson": {"handson"}, "bookinfo-lite": {"default"}}
	want := map[string][]string{
		"handson": {
			"handson/curl>svc handson/handson>http>codes=200,403>mtls",
			"svc handson/handson>handson/handson-blue>http>codes=200>mtls",
			"handson/curl>svc handson/handson>tcp>mtls",
		},
		"bookinfo-lite": {
			"default/sleep-1>svc default/web-api>tcp>mtls",
			"svc default/web-api>default/web-api-1>tcp>mtls",
			"default/web-api-1>svc default/recommendation>tcp>mtls",
			"default/recommendation-1>svc default/purchase-history>tcp>mtls",
			"svc default/purchase-history>default/purchase-history-v1-1>tcp>mtls",
		},
	}
	var prom *promProc
	var started time.Time
	graphs := map[string]*meshgraph.Graph{}
	var errs []string
	reports, err := Run(context.Background(), Options{
		Root: root, Scenarios: []string{"handson", "bookinfo-lite"}, Bins: bins, GraphDir: filepath.Join(dir, "graphs"),
		Started: func(sc string, targets []Target) {
			started = time.Now()
			prom = startPrometheus(t, bin, filepath.Join(dir, "prom-"+sc), targets)
		},
		Played: func(sc string, replay func(context.Context) error) {
			defer prom.stop()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for round := range 3 {
				if err := prom.scrapedAfter(ctx, time.Now()); err != nil {
					errs = append(errs, fmt.Sprintf("%s round %d: %v", sc, round, err))
					return
				}
				if err := replay(ctx); err != nil {
					errs = append(errs, fmt.Sprintf("%s round %d: %v", sc, round, err))
					return
				}
			}
			if err := prom.scrapedAfter(ctx, time.Now()); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", sc, err))
				return
			}
			window := time.Since(started).Round(time.Second) + time.Minute
			g, results, err := meshgraph.FromPrometheus(ctx, &http.Client{Timeout: 10 * time.Second}, prom.url, namespaces[sc], window, time.Now())
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", sc, err))
				return
			}
			for _, r := range results {
				t.Logf("%s: Kiali %s query %q: %d rows", sc, r.Kind, r.What, len(r.Rows))
			}
			graphs[sc] = g
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reports {
		if !r.OK() {
			t.Errorf("%s: %d of %d checks passed: %v", r.Scenario, r.Passed, r.Checks, r.Failures)
		}
	}
	for _, e := range errs {
		t.Error(e)
	}
	for sc, edges := range want {
		g := graphs[sc]
		if g == nil {
			t.Errorf("%s: no graph from Prometheus", sc)
			continue
		}
		var b strings.Builder
		g.WriteTable(&b)
		t.Logf("%s from Prometheus:\n%s", sc, b.String())
		for _, w := range edges {
			if !hasEdge(g, w) {
				t.Errorf("%s: Kiali's queries give no edge %s", sc, w)
			}
		}
		for _, e := range g.Edges {
			if !e.MTLS {
				t.Errorf("%s: edge %s → %s (%s) is not mutual_tls", sc, e.Source, e.Dest, e.Protocol)
			}
		}
	}
}

// hasEdge reports whether g has the edge "src>dst>proto[>codes=a,b][>mtls]" with a rate, the
// codes among its response codes (an error rate when one is 4xx) and mTLS.
func hasEdge(g *meshgraph.Graph, want string) bool {
	parts := strings.Split(want, ">")
	f := parts[2:]
	for _, e := range g.Edges {
		if label(g, e.Source) != parts[0] || label(g, e.Dest) != parts[1] || e.Protocol != parts[2] || e.Rate <= 0 {
			continue
		}
		ok := true
		for _, a := range f[1:] {
			switch {
			case a == "mtls":
				ok = ok && e.MTLS
			case strings.HasPrefix(a, "codes="):
				for _, c := range strings.Split(strings.TrimPrefix(a, "codes="), ",") {
					ok = ok && e.Codes[c] > 0
					if c[0] == '4' {
						ok = ok && e.Errors > 0
					}
				}
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func label(g *meshgraph.Graph, id string) string {
	n := g.Nodes[id]
	if n.Kind == "service" {
		return "svc " + n.Namespace + "/" + n.Name
	}
	return n.Namespace + "/" + n.Name
}
