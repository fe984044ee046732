package gateway

import (
	"context"
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

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	capki "github.com/goambient/goambient/xdsserver/ca/pki"
	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/waypointxds"
	"github.com/goambient/goambient/xdsserver/wds"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/identity"
)

// meshYAML is the gateway-api scenario reduced to what the gateway sees: appa reached straight
// at its pod, appb through its waypoint (istio.io/ingress-use-waypoint), an HTTP listener, an
// HTTPS listener with the certificate of testdata/secret.yaml, and one whose Secret is missing.
const meshYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: appa}
spec: {clusterIP: "${appa-vip}", selector: {app: appa}, ports: [{name: http, port: 8000, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: appb, labels: {istio.io/use-waypoint: waypoint, istio.io/ingress-use-waypoint: "true"}}
spec: {clusterIP: "${appb-vip}", selector: {app: appb}, ports: [{name: http, port: 8000, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec: {clusterIP: "${empty-vip}", selector: {app: nobody}, ports: [{name: http, port: 8000, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: appa, labels: {app: appa}}
spec: {serviceAccountName: appa, nodeName: worker}
status: {podIP: "${appa}"}
---
apiVersion: v1
kind: Pod
metadata: {name: appb, labels: {app: appb}}
spec: {serviceAccountName: appb, nodeName: worker}
status: {podIP: "${appb}"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {clusterIP: "${waypoint-vip}", selector: {gateway.networking.k8s.io/gateway-name: waypoint}, ports: [{name: mesh, port: 15008}]}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-0, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {serviceAccountName: waypoint, nodeName: worker}
status: {podIP: "${waypoint}"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway}
spec:
  gatewayClassName: istio
  listeners:
  - {name: default, hostname: "*.opssec.in", port: 80, protocol: HTTP}
  - {name: https, hostname: "*.opssec.in", port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: opssec-cert}]}}
  - {name: missing, hostname: "other.example.com", port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: no-such-secret}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: routes}
spec:
  parentRefs: [{name: gateway}]
  hostnames: ["appa.opssec.in", "appb.opssec.in"]
  rules:
  - matches: [{headers: [{name: host-is, value: b}]}]
    backendRefs: [{name: appb, port: 8000}]
  - matches: [{path: {type: PathPrefix, value: /empty}}]
    backendRefs: [{name: empty, port: 8000}]
  - backendRefs: [{name: appa, port: 8000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: appb}
spec:
  parentRefs: [{name: gateway}]
  hostnames: ["appb.opssec.in"]
  rules:
  - backendRefs: [{name: appb, port: 8000}]
`

// addrs are one test's addresses on a random 127.a.b.0/24.
type addrs struct {
	net  string
	byID map[string]netip.Addr
}

func newAddrs() *addrs {
	return &addrs{net: fmt.Sprintf("127.%d.%d", 10+rand.IntN(90), 1+rand.IntN(250)), byID: map[string]netip.Addr{}}
}

func (a *addrs) of(id string) netip.Addr {
	if ip, ok := a.byID[id]; ok {
		return ip
	}
	ip := netip.MustParseAddr(fmt.Sprintf("%s.%d", a.net, 2+len(a.byID)))
	a.byID[id] = ip
	return ip
}

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

// fixture is a gateway configured from xdsserver's translation of meshYAML, with appa's
// ztunnel inbound and appb's waypoint played by HBONE servers of their own identities.
type fixture struct {
	a       *addrs
	ca      *capki.CA
	m       *model.Mesh
	g       *Gateway
	log     *syncBuf
	appa    *peer
	wp      *peer
	gwID    string
	caCerts []byte
}

// peer is an HBONE server standing for a pod's ztunnel or a waypoint: it checks the CONNECT's
// :authority and records the caller's identity, then relays to a small HTTP app.
type peer struct {
	name  string
	mu    sync.Mutex
	calls []string // "<peer id> <authority>"
}

func (p *peer) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.calls...)
}

func startPeer(t testing.TB, ca *capki.CA, name, sa string, ip netip.Addr, authority netip.AddrPort) *peer {
	t.Helper()
	p := &peer{name: name}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("x-app", name)
		if strings.HasPrefix(r.URL.Path, "/bigheader/") {
			var n int
			fmt.Sscanf(r.URL.Path, "/bigheader/%d", &n)
			w.Header().Set("x-big", strings.Repeat("h", n))
			return
		}
		if strings.HasPrefix(r.URL.Path, "/status/") {
			var code int
			fmt.Sscanf(r.URL.Path, "/status/%d", &code)
			w.WriteHeader(code)
			return
		}
		fmt.Fprintf(w, "%s %s %s host=%s xff=%s proto=%s body=%d", name, r.Method, r.URL.RequestURI(), r.Host, r.Header.Get("x-forwarded-for"), r.Header.Get("x-forwarded-proto"), len(b))
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	id, _ := identity.WorkloadID(td, "default", sa)
	cert, err := ca.IssueSVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := hbone.NewServer(hbone.ServerConfig{
		Bundle: ca.Bundle(), GetCertificate: func(netip.Addr) (*x509svid.SVID, error) { return cert, nil },
		Handler: hbone.HandlerFunc(func(ctx context.Context, req *hbone.Request) hbone.Response {
			p.mu.Lock()
			p.calls = append(p.calls, req.Peer.String()+" "+req.Authority.String())
			p.mu.Unlock()
			if req.Authority.Addr != authority {
				return hbone.Response{Status: 400}
			}
			c, err := net.Dial("tcp", ln.Addr().String())
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
	return p
}

// syncBuf is a concurrency-safe access-log sink.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func setup(t testing.TB, lim Limits) *fixture {
	t.Helper()
	secret, err := os.ReadFile("testdata/secret.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{a: newAddrs(), log: &syncBuf{}}
	f.caCerts, err = os.ReadFile("testdata/opssec-cert.pem")
	if err != nil {
		t.Fatal(err)
	}
	set, problems, err := kubeobj.Load([]byte(f.a.render(meshYAML)+"\n---\n"+string(secret)), "test.yaml")
	if err != nil || len(problems) > 0 {
		t.Fatal(err, problems)
	}
	f.m, err = model.Build(set, model.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	if f.ca, err = capki.NewCA(td); err != nil {
		t.Fatal(err)
	}
	f.appa = startPeer(t, f.ca, "appa", "appa", f.a.of("appa"), netip.AddrPortFrom(f.a.of("appa"), 8080))
	f.wp = startPeer(t, f.ca, "appb-via-waypoint", "waypoint", f.a.of("waypoint"), netip.AddrPortFrom(f.a.of("appb-vip"), 8000))
	dir := t.TempDir()
	if err := f.ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	gid, _ := identity.WorkloadID(td, "default", "gateway-istio")
	f.gwID = gid.String()
	s, err := f.ca.IssueSVID(gid, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity.WriteSVID(dir, s); err != nil {
		t.Fatal(err)
	}
	f.g, err = Start(context.Background(), Options{
		NodeID:   "router~" + f.a.of("gateway").String() + "~gateway-istio-0.default~default.svc.cluster.local",
		Identity: identity.NewDirSource(dir, td), ServiceAccount: "gateway-istio", AccessLog: f.log,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Limits: lim,
		ListenAddress: func(uint32) string { return "127.0.0.1:0" },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.g.Stop)
	f.apply(t, f.m)
	return f
}

// apply feeds the gateway what xdsserver sends it: the workload API, and the Gateway's
// resources from the real translator, its certificates as the secure listener adds them.
func (f *fixture) apply(t testing.TB, m *model.Mesh) {
	t.Helper()
	r := waypointxds.Translate(m, waypointxds.Options{})
	if err := waypointxds.Validate(r); err != nil {
		t.Fatalf("translation: %v", err)
	}
	w := r.Waypoints["default/gateway"]
	if w == nil {
		t.Fatal("no resources for default/gateway")
	}
	by := w.ByType()
	secrets := map[string]*anypb.Any{}
	for _, c := range w.Credentials {
		secrets[c.GetName()] = mustAny(t, c)
	}
	addrs := map[string]*anypb.Any{}
	for name, msg := range wds.Translate(m, wds.Options{}).ByType()[AddressType] {
		addrs[name] = mustAny(t, msg)
	}
	for _, typ := range Types {
		res := map[string]*anypb.Any{}
		switch typ {
		case AddressType:
			res = addrs
		case SecretType:
			res = secrets
		default:
			for name, msg := range by[typ] {
				res[name] = mustAny(t, msg)
			}
		}
		if err := f.g.Store().Apply(typ, res); err != nil {
			t.Fatalf("apply %s: %v", typ, err)
		}
	}
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (f *fixture) url(t testing.TB, port uint32, scheme, path string) string {
	t.Helper()
	a := f.g.Addr(port)
	if a == nil {
		t.Fatalf("no listener for port %d", port)
	}
	return scheme + "://" + a.String() + path
}
