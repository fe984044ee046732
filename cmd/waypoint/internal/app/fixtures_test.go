package app

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	capki "github.com/goambient/goambient/xdsserver/ca/pki"

	golang "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/http/golang/v3alpha"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	xds "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/cmd/waypoint/internal/config"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/identity"
)

// The handson scenario, step 3, as xdsserver is contracted to serve it to the waypoint.
const (
	ns         = "handson"
	hostname   = "handson.handson.svc.cluster.local"
	waypointSA = "handson-istio-waypoint"
	routeName  = "inbound-vip|8080|http|" + hostname
	ecdsName   = "goambient.authz/handson/handson"
)

// mesh is one test's addresses: a random 127.a.b.0/24 for the pods and the VIP.
type mesh struct {
	net      string
	vip      netip.Addr
	blue     netip.Addr // handson-blue, the endpoint
	waypoint netip.Addr
	curl     netip.Addr
}

func newMesh() mesh {
	n := fmt.Sprintf("127.%d.%d", 10+rand.IntN(90), 1+rand.IntN(250))
	p := func(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("%s.%d", n, i)) }
	return mesh{net: n, vip: p(200), blue: p(2), waypoint: p(3), curl: p(4)}
}

func (m mesh) nodeID() string {
	return fmt.Sprintf("waypoint~%s~%s.%s~%s.svc.cluster.local", m.waypoint, waypointSA, ns, ns)
}

// pki is a root CA and SVID folder with the scenario's identities.
type pki struct {
	dir string
	ca  *capki.CA
}

func newPKI(t testing.TB, sas ...string) *pki {
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
	for _, sa := range sas {
		if _, err := identity.WriteSVID(dir, p.svid(t, sa)); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func (p *pki) svid(t testing.TB, sa string) *x509svid.SVID {
	t.Helper()
	id, _ := identity.WorkloadID(p.ca.TrustDomain(), ns, sa)
	s, err := p.ca.IssueSVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func anyOf(a *anypb.Any, err error) *anypb.Any {
	if err != nil {
		panic(err)
	}
	return a
}

// ecds is the waypoint's TypedExtensionConfig with the L7 policy of handson step 3.
func ecds(t testing.TB, pluginName string, policies string) types.Resource {
	t.Helper()
	cfg := anyOf(authzconfig.EncodeConfig(&authzconfig.Config{Namespace: ns, Gateway: "handson", GatewayClass: "istio-waypoint", Policies: policies}))
	gc := anyOf(anypb.New(&golang.Config{LibraryId: authzconfig.LibraryID, LibraryPath: authzconfig.LibraryPath, PluginName: pluginName, PluginConfig: cfg}))
	return &core.TypedExtensionConfig{Name: ecdsName, TypedConfig: gc}
}

func rds(t testing.TB) types.Resource {
	t.Helper()
	rc := anyOf(authzconfig.EncodeRoute(&authzconfig.Route{Service: "handson", ServiceNamespace: ns}))
	per := anyOf(anypb.New(&golang.ConfigsPerRoute{PluginsConfig: map[string]*golang.RouterPlugin{
		authzconfig.PluginName: {Override: &golang.RouterPlugin_Config{Config: rc}},
	}}))
	return &route.RouteConfiguration{Name: routeName, VirtualHosts: []*route.VirtualHost{{
		Name: routeName, Domains: []string{"*"},
		TypedPerFilterConfig: map[string]*anypb.Any{authzconfig.FilterName: per},
		Routes: []*route.Route{{
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: routeName}}},
		}},
	}}}
}

func addresses(m mesh) map[string]types.Resource {
	svcKey := ns + "/" + hostname
	wl := func(name, sa string, ip netip.Addr, proto workloadapi.TunnelProtocol, svcs map[string]*workloadapi.PortList) types.Resource {
		return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: "Kubernetes//Pod/" + ns + "/" + name, Name: name, Namespace: ns, ServiceAccount: sa,
			Addresses: [][]byte{ip.AsSlice()}, TunnelProtocol: proto, Services: svcs, Status: workloadapi.WorkloadStatus_HEALTHY,
		}}}
	}
	return map[string]types.Resource{
		"Kubernetes//Pod/handson/handson-blue": wl("handson-blue", "handson", m.blue, workloadapi.TunnelProtocol_HBONE,
			map[string]*workloadapi.PortList{svcKey: {Ports: []*workloadapi.Port{{ServicePort: 8080, TargetPort: 8080}}}}),
		"Kubernetes//Pod/handson/" + waypointSA: wl(waypointSA, waypointSA, m.waypoint, workloadapi.TunnelProtocol_NONE, nil),
		svcKey: &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
			Name: "handson", Namespace: ns, Hostname: hostname,
			Addresses: []*workloadapi.NetworkAddress{{Address: m.vip.AsSlice()}},
			Ports:     []*workloadapi.Port{{ServicePort: 8080, TargetPort: 8080}},
		}}},
	}
}

// cp is an in-process go-control-plane ADS server holding the contracted waypoint resources.
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
	if err := c.caches[typ].UpdateResources(res, nil); err != nil {
		t.Fatal(err)
	}
}

// app is the echo application behind handson-blue: it answers every request with its method.
type app struct {
	addr string
	mu   sync.Mutex
	reqs []string
}

func startApp(t testing.TB) *app {
	t.Helper()
	a := &app{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.addr = ln.Addr().String()
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.reqs = append(a.reqs, r.Method+" "+r.URL.Path)
		a.mu.Unlock()
		fmt.Fprintf(w, "handson-blue %s %s %d", r.Method, r.URL.Path, len(b))
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return a
}

func (a *app) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.reqs...)
}

// startDest is handson-blue's ztunnel inbound, reduced to what the test needs: HBONE on
// blue:15008 with handson-blue's SVID, relaying to the app; it records the peers it saw.
func startDest(t testing.TB, p *pki, m mesh, appAddr string) chan string {
	t.Helper()
	peers := make(chan string, 1024)
	blue := p.svid(t, "handson")
	srv, err := hbone.NewServer(hbone.ServerConfig{
		Bundle: p.ca.Bundle(), GetCertificate: func(netip.Addr) (*x509svid.SVID, error) { return blue, nil },
		Handler: hbone.HandlerFunc(func(ctx context.Context, req *hbone.Request) hbone.Response {
			select {
			case peers <- req.Peer.String() + " " + req.Authority.String() + " " + req.Forwarded:
			default:
			}
			if req.Authority.Addr != netip.AddrPortFrom(m.blue, 8080) {
				return hbone.Response{Status: 400}
			}
			c, err := net.Dial("tcp", appAddr)
			if err != nil {
				return hbone.Response{Status: 503}
			}
			return hbone.Response{Status: 200, Upstream: c}
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(m.blue, 15008).String())
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return peers
}
