package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	xds "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/goambient/goambient/filters/embedded/config"
	"github.com/goambient/goambient/filters/embedded/server"
	capki "github.com/goambient/goambient/xdsserver/ca/pki"
	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/waypointxds"
	"github.com/goambient/goambient/xdsserver/wds"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/identity"
)

// addrs are one test's addresses: a random 127.a.b.0/24, so that tests in parallel (and other
// packages' tests) never share one.
type addrs struct {
	net  string
	byID map[string]netip.Addr
}

func newAddrs() *addrs {
	return &addrs{net: fmt.Sprintf("127.%d.%d", 10+rand.IntN(90), 1+rand.IntN(250)), byID: map[string]netip.Addr{}}
}

// of returns the address named id (vip, blue, appb-v1...), allocating the next one.
func (a *addrs) of(id string) netip.Addr {
	if ip, ok := a.byID[id]; ok {
		return ip
	}
	ip := netip.MustParseAddr(fmt.Sprintf("%s.%d", a.net, 2+len(a.byID)))
	a.byID[id] = ip
	return ip
}

// render replaces every ${name} of a template with an address.
func (a *addrs) render(tmpl string) string {
	var b strings.Builder
	for {
		i := strings.Index(tmpl, "${")
		if i < 0 {
			b.WriteString(tmpl)
			return b.String()
		}
		j := strings.IndexByte(tmpl[i:], '}')
		b.WriteString(tmpl[:i])
		b.WriteString(a.of(tmpl[i+2 : i+j]).String())
		tmpl = tmpl[i+j+1:]
	}
}

// pki is a root CA and SVID folder with the scenario's identities.
type pki struct {
	dir string
	ca  *capki.CA
}

func newPKI(t testing.TB, ids ...string) *pki {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := capki.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: dir, ca: ca}
	for _, id := range ids {
		ns, sa, _ := strings.Cut(id, "/")
		if _, err := identity.WriteSVID(dir, p.svid(t, ns, sa)); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func (p *pki) svid(t testing.TB, ns, sa string) *x509svid.SVID {
	t.Helper()
	id, _ := identity.WorkloadID(p.ca.TrustDomain(), ns, sa)
	s, err := p.ca.IssueSVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// cp is an in-process go-control-plane ADS server: one LinearCache per type the waypoint
// subscribes to, fed with xdsserver's own translations of the test's YAML.
type cp struct {
	addr   string
	caches map[string]*cache.LinearCache
	nacks  chan string
}

func startCP(t testing.TB) *cp {
	t.Helper()
	c := &cp{caches: map[string]*cache.LinearCache{}, nacks: make(chan string, 16)}
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{},
	}
	for _, typ := range config.Types {
		lc := cache.NewLinearCache(typ)
		c.caches[typ] = lc
		mux.Caches[typ] = lc
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := xds.NewServer(ctx, mux, xds.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
			if r.GetErrorDetail() != nil {
				select {
				case c.nacks <- r.GetErrorDetail().GetMessage():
				default:
				}
			}
			return nil
		},
	})
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(func() { g.Stop(); cancel() })
	c.addr = ln.Addr().String()
	return c
}

func (c *cp) set(t testing.TB, typ string, res map[string]types.Resource) {
	t.Helper()
	c.caches[typ].SetResources(res)
}

// mesh builds the model of YAML, failing on any error (routing warnings are allowed).
func buildMesh(t testing.TB, data string) *model.Mesh {
	t.Helper()
	set, problems, err := kubeobj.Load([]byte(data), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Build(set, model.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if errs := append(problems, m.Errors...); len(errs) > 0 {
		t.Fatalf("the test's YAML has errors: %v", errs)
	}
	return m
}

// serve gives the control plane what xdsserver would send the waypoint gateway of the mesh:
// the workload API and the waypoint's ECDS, CDS, EDS and RDS, from the real translators.
func (c *cp) serve(t testing.TB, m *model.Mesh, gateway string) *waypointxds.WaypointResources {
	t.Helper()
	addrs := map[string]types.Resource{}
	for name, r := range wds.Translate(m, wds.Options{}).ByType()[config.AddressType] {
		addrs[name] = r
	}
	r := waypointxds.Translate(m, waypointxds.Options{})
	if err := waypointxds.Validate(r); err != nil {
		t.Fatalf("the translation is not valid: %v", err)
	}
	w := r.Waypoints[gateway]
	if w == nil {
		t.Fatalf("no waypoint %s in the mesh", gateway)
	}
	by := w.ByType()
	c.set(t, config.AddressType, addrs)
	for _, typ := range []string{config.ClusterType, config.EndpointType, config.ExtensionType, config.RouteType} {
		res := map[string]types.Resource{}
		for name, msg := range by[typ] {
			res[name] = proto.Clone(msg)
		}
		c.set(t, typ, res)
	}
	return w
}

// app is the application of a pod behind its ztunnel: it answers with its name, what it saw,
// and what the test made it do (status codes, delays, flakiness).
type app struct {
	name string
	addr string

	mu    sync.Mutex
	reqs  []string
	calls int
	// hang, when set, makes every request wait until its client goes away; inflight and
	// maxInflight count such requests.
	hang                  bool
	inflight, maxInflight int
}

// ServeHTTP answers GET /headers with the request's headers as JSON (httpbin's /headers, plus
// the pod's name), /status/<code> with that code, /bigheader/<n> with a header of n bytes, /flaky... with 503 every other call, /delay/<ms>
// after that long, anything else with "<pod> <METHOD> <path> <body length>".
func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	a.reqs = append(a.reqs, r.Method+" "+r.URL.RequestURI())
	a.calls++
	n := a.calls
	hang := a.hang
	if hang {
		a.inflight++
		a.maxInflight = max(a.maxInflight, a.inflight)
	}
	a.mu.Unlock()
	if hang {
		<-r.Context().Done()
		a.mu.Lock()
		a.inflight--
		a.mu.Unlock()
		return
	}
	w.Header().Set("X-Pod", a.name)
	switch p := r.URL.Path; {
	case p == "/headers":
		h := map[string]string{"Host": r.Host}
		for k := range r.Header {
			h[k] = strings.Join(r.Header[k], ",")
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"headers": h, "pod": a.name})
	case strings.HasPrefix(p, "/status/"):
		var code int
		fmt.Sscanf(p, "/status/%d", &code)
		w.WriteHeader(code)
	case strings.HasPrefix(p, "/flaky"):
		if n%2 == 1 {
			http.Error(w, a.name+" flaked", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "%s ok", a.name)
	case strings.HasPrefix(p, "/bigheader/"):
		var n int
		fmt.Sscanf(p, "/bigheader/%d", &n)
		w.Header().Set("X-Big", strings.Repeat("h", n))
		fmt.Fprintf(w, "%s big header %d", a.name, n)
	case strings.HasPrefix(p, "/delay/"):
		var ms int
		fmt.Sscanf(p, "/delay/%d", &ms)
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		fmt.Fprintf(w, "%s slept %d", a.name, ms)
	default:
		fmt.Fprintf(w, "%s %s %s %d", a.name, r.Method, r.URL.RequestURI(), len(b))
	}
}

func (a *app) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.reqs...)
}

// startPod runs a pod's app and its ztunnel's HBONE inbound, reduced to what the tests need:
// HBONE on ip:15008 with the pod's SVID, relaying a CONNECT to ip:port to the app; it records
// each CONNECT (peer, authority, forwarded).
func startPod(t testing.TB, p *pki, name, ns, sa string, ip netip.Addr, port uint16) (*app, chan string) {
	t.Helper()
	a := &app{name: name}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.addr = ln.Addr().String()
	hs := &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	peers := make(chan string, 4096)
	cert := p.svid(t, ns, sa)
	srv, err := hbone.NewServer(hbone.ServerConfig{
		Bundle: p.ca.Bundle(), GetCertificate: func(netip.Addr) (*x509svid.SVID, error) { return cert, nil },
		Handler: hbone.HandlerFunc(func(ctx context.Context, req *hbone.Request) hbone.Response {
			select {
			case peers <- req.Peer.String() + " " + req.Authority.String() + " " + req.Forwarded:
			default:
			}
			if req.Authority.Addr != netip.AddrPortFrom(ip, port) {
				return hbone.Response{Status: 400}
			}
			c, err := net.Dial("tcp", a.addr)
			if err != nil {
				return hbone.Response{Status: 503}
			}
			return hbone.Response{Status: 200, Upstream: c}
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	hln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 15008).String())
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(hln)
	t.Cleanup(func() { srv.Close() })
	return a, peers
}

// syncBuf is a concurrency-safe access-log sink.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// entries returns the access-log lines as maps.
func (s *syncBuf) entries(t testing.TB) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waypoint is the embedded waypoint under test, with its control plane and a client.
type waypoint struct {
	a      *addrs
	p      *pki
	cp     *cp
	wp     *App
	log    *syncBuf
	client *hbone.Client
	ns, sa string // the waypoint's identity
}

// wpConfig is what a test changes in the waypoint: its limits, and a logger (nil: discarded,
// or to stderr with -v).
type wpConfig struct {
	limits  server.Limits
	logger  *slog.Logger
	metrics bool // a metrics listener on 127.0.0.1:0 (request metrics recorded)
}

// startWaypoint starts the embedded waypoint for pod ns/pod (service account sa) with a
// seeded random source.
func startWaypoint(t testing.TB, a *addrs, p *pki, ns, pod, sa string, seed uint64, cfg ...wpConfig) *waypoint {
	t.Helper()
	w := &waypoint{a: a, p: p, cp: startCP(t), log: &syncBuf{}, ns: ns, sa: sa}
	var c wpConfig
	if len(cfg) > 0 {
		c = cfg[0]
	}
	logger := c.logger
	switch {
	case logger != nil:
	case testing.Verbose():
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	default:
		logger = slog.New(slog.DiscardHandler)
	}
	h, err := AuthzHost(logger)
	if err != nil {
		t.Fatal(err)
	}
	ip := a.of("waypoint")
	metricsListen := ""
	if c.metrics {
		metricsListen = "127.0.0.1:0"
	}
	wp, err := Start(context.Background(), Options{
		MetricsListen: metricsListen,
		XDSAddress:    w.cp.addr, NodeID: fmt.Sprintf("waypoint~%s~%s.%s~%s.svc.cluster.local", ip, pod, ns, ns),
		Listen: netip.AddrPortFrom(ip, 0).String(), ReadyListen: "127.0.0.1:0", SVIDDir: p.dir, ServiceAccount: sa,
		AccessLog: w.log, Logger: logger, Host: h, Rand: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), Limits: c.limits,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wp.Stop)
	w.wp = wp
	w.client, err = hbone.NewClient(hbone.ClientConfig{Bundle: p.ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.client.Close() })
	return w
}

func (w *waypoint) ready() int {
	resp, err := http.Get("http://" + w.wp.ReadyAddr().String() + "/healthz/ready")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// stream is one CONNECT to the waypoint carrying HTTP/1.1 requests, as a source ztunnel opens it.
type stream struct {
	c    *hbone.Conn
	br   *bufio.Reader
	host string
}

// connect opens a CONNECT to vip:port as the client ns/sa from source address src.
func (w *waypoint) connect(t testing.TB, ns, sa string, vip netip.AddrPort, host string, src netip.AddrPort) *stream {
	t.Helper()
	wpID := spiffeid.RequireFromString("spiffe://cluster.local/ns/" + w.ns + "/sa/" + w.sa)
	c, err := w.client.Dial(context.Background(), hbone.Target{
		Source: w.p.svid(t, ns, sa), Address: netip.MustParseAddrPort(w.wp.Addr().String()), Identities: []spiffeid.ID{wpID},
		Authority: vip.String(), SourceAddr: src, Host: host,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &stream{c: c, br: bufio.NewReader(c), host: host}
}

// response is what a client got.
type response struct {
	code   int
	body   string
	header http.Header
	took   time.Duration
}

func (s *stream) send(t testing.TB, method, path, body string, hdr map[string]string) response {
	t.Helper()
	r, err := s.try(method, path, body, hdr)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (s *stream) try(method, path, body string, hdr map[string]string) (response, error) {
	req, _ := http.NewRequest(method, "http://"+s.host+path, strings.NewReader(body))
	if body == "" {
		req.Body = nil
	}
	for k, v := range hdr {
		if strings.EqualFold(k, "host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	start := time.Now()
	if err := req.Write(s.c); err != nil {
		return response{}, err
	}
	resp, err := http.ReadResponse(s.br, req)
	if err != nil {
		return response{}, err
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{code: resp.StatusCode, body: string(b), header: resp.Header, took: time.Since(start)}, nil
}

// do is send for tests that need the code and body only.
func (s *stream) do(t testing.TB, method, path, body string) (int, string) {
	t.Helper()
	r := s.send(t, method, path, body, nil)
	return r.code, r.body
}
