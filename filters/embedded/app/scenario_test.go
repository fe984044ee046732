package app

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
)

// binomialOK reports whether k successes of n trials are within 4.5 standard deviations of
// n·p: a correct waypoint fails it about once in 150,000 runs.
func binomialOK(k, n int, p float64) (bool, string) {
	mean, sd := float64(n)*p, math.Sqrt(float64(n)*p*(1-p))
	lo, hi := mean-4.5*sd, mean+4.5*sd
	return float64(k) >= lo && float64(k) <= hi, fmt.Sprintf("%d of %d (expected %.0f, within [%.1f, %.1f])", k, n, mean, lo, hi)
}

// TestSeedDelay: the seed tutorial's VirtualService, verbatim from the scenario, delays about
// half of /headers by 2 s (a binomial bound on N concurrent requests), every delayed answer
// takes at least 2 s and is logged DI; other paths are not delayed. Peers as TestRouting.
func TestSeedDelay(t *testing.T) {
	t.Parallel()
	f := setupTraffic(t, 7)
	f.apply(t, scenario("virtual-service-delay.yaml"))
	const n = 40
	took := make([]time.Duration, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		s := f.client(t, "")
		wg.Go(func() {
			r, err := s.try("GET", "/headers", "", nil)
			if err == nil && r.code != 200 {
				err = fmt.Errorf("GET /headers: %d %q", r.code, r.body)
			}
			if err != nil {
				errs <- err
			}
			took[i] = r.took
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	di := 0
	for _, e := range f.log.entries(t) {
		if hasFlag(e, "DI") {
			di++
			if d, _ := e["duration"].(float64); d < 2000 {
				t.Errorf("a delayed request lasted %v ms in the access log, want at least 2000", d)
			}
		}
	}
	slow := 0
	for _, d := range took {
		if d >= 2*time.Second {
			slow++
		}
	}
	// A response can be slow for other reasons under load, never fast when delayed.
	if slow < di {
		t.Errorf("%d requests logged DI but only %d took 2 s or more", di, slow)
	}
	if ok, msg := binomialOK(di, n, 0.5); !ok {
		t.Errorf("delayed: %s", msg)
	} else {
		t.Logf("delayed: %s", msg)
	}
	r := f.client(t, "").send(t, "GET", "/get", "", nil)
	if r.code != 200 || r.took >= 2*time.Second {
		t.Errorf("GET /get: %d after %v, want 200 undelayed", r.code, r.took)
	}
}

// TestCanary: the scenario's 90/10 split between the subsets v1 and v2, counted over N
// requests against a binomial bound; the access log names the subset's cluster.
func TestCanary(t *testing.T) {
	t.Parallel()
	f := setupTraffic(t, 11)
	f.apply(t, subsets+"\n---\n"+scenario("virtual-service-canary.yaml"))
	const n = 300
	s := f.client(t, "")
	pods := map[string]int{}
	for range n {
		r := s.send(t, "GET", "/", "", nil)
		if r.code != 200 {
			t.Fatalf("GET /: %d %q", r.code, r.body)
		}
		pods[r.header.Get("X-Pod")]++
	}
	if pods["appb-v1"]+pods["appb-v2"] != n {
		t.Fatalf("answered by %v", pods)
	}
	ok, msg := binomialOK(pods["appb-v2"], n, 0.1)
	if !ok {
		t.Errorf("v2: %s", msg)
	}
	t.Logf("v2: %s", msg)
	clusters := map[string]int{}
	for _, e := range f.log.entries(t) {
		clusters[logField(e, "upstream_cluster")]++
	}
	if clusters[appbV1] != pods["appb-v1"] || clusters[appbV2] != pods["appb-v2"] {
		t.Errorf("access log clusters %v, answers %v", clusters, pods)
	}
}

// TestRetryScenario: /flaky answers 503 every other call on each pod; without a retry policy
// some requests fail, with the scenario's (3 attempts on 5xx) every one is a 200.
func TestRetryScenario(t *testing.T) {
	t.Parallel()
	f := setupTraffic(t, 3)
	f.apply(t, scenario("virtual-service-delay.yaml"))
	const n = 20
	s := f.client(t, "")
	failed := 0
	for range n {
		if r := s.send(t, "GET", "/flaky", "", nil); r.code == 503 {
			failed++
		}
	}
	if failed == 0 {
		t.Fatalf("no 503 from the flaky backend without retries")
	}
	f.apply(t, scenario("virtual-service-retry.yaml"))
	for i := range n {
		if r := s.send(t, "GET", "/flaky", "", nil); r.code != 200 {
			t.Fatalf("request %d with retries: %d %q", i, r.code, r.body)
		}
	}
	for _, e := range f.log.entries(t)[n:] {
		if logField(e, "route_name") != "flaky" || logField(e, "response_code") != "200" || logField(e, "response_flags") != "-" {
			t.Errorf("access log %v, want route flaky, 200, no flags", e)
		}
	}
	t.Logf("without retries %d of %d failed; with retries all 200", failed, n)
}

// TestBadRoutingKeepsLastGood: an edit that makes the VirtualService invalid is reported with
// its object and field, and the waypoint goes on routing with the last valid version; the
// rest of the same push (a new valid VirtualService for appb-v2) is applied.
func TestBadRoutingKeepsLastGood(t *testing.T) {
	t.Parallel()
	f := setupTraffic(t, 5)
	good := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - name: teapot
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: appb}}]
`
	bad := strings.Replace(good, "    fault:", "    match: [{uri: {regex: \"(\"}}]\n    fault:", 1) +
		`---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb-v2}
spec:
  hosts: [appb-v2]
  http:
  - name: v2-teapot
    fault: {abort: {httpStatus: 419, percentage: {value: 100}}}
    route: [{destination: {host: appb-v2}}]
`
	first := buildMesh(t, f.a.render(f.tmpl+"\n---\n"+good))
	f.settle(t, f.cp.serve(t, first, "default/waypoint"))
	if r := f.client(t, "").send(t, "GET", "/", "", nil); r.code != 418 {
		t.Fatalf("with the good VirtualService: %d", r.code)
	}

	set, problems, err := kubeobj.Load([]byte(f.a.render(f.tmpl+"\n---\n"+bad)), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := model.DefaultConfig()
	cfg.Previous = first
	m, err := model.Build(set, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, e := range append(problems, m.Errors...) {
		msgs = append(msgs, e.Error())
	}
	all := strings.Join(msgs, "\n")
	if !strings.Contains(all, "VirtualService default/appb") || !strings.Contains(all, "spec.http[0].match[0].uri.regex") ||
		!strings.Contains(all, "the previous valid version is kept") {
		t.Errorf("errors do not name the object, the field and what is kept:\n%s", all)
	}
	f.settle(t, f.cp.serve(t, m, "default/waypoint"))
	if r := f.client(t, "").send(t, "GET", "/", "", nil); r.code != 418 {
		t.Errorf("after the bad edit: %d, want the last good VirtualService's 418", r.code)
	}
	v2 := f.waypoint.connect(t, "default", "appa", netip.AddrPortFrom(f.a.of("appb-v2-vip"), 8000), "appb-v2:8000", netip.AddrPortFrom(f.a.of("appa"), 40001))
	if r := v2.send(t, "GET", "/", "", nil); r.code != 419 {
		t.Errorf("appb-v2 after the push: %d, want the new VirtualService's 419", r.code)
	}
}
