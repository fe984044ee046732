package app

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/filters/embedded/gateway"
	"github.com/goambient/goambient/xdsserver/waypointxds"
	"github.com/goambient/goambient/xdsserver/wds"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/identity"
)

// ingress is the gateway-api scenario's Gateway and HTTPRoute (to appb-v1, one pod), and appb-v1
// sending the gateway's traffic through its waypoint.
const ingress = `
apiVersion: v1
kind: Service
metadata: {name: appb-v1, labels: {istio.io/ingress-use-waypoint: "true"}}
spec: {clusterIP: "${appb-v1-vip}", selector: {app: appb, version: v1}, ports: [{name: http, port: 8000, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway}
spec:
  gatewayClassName: istio
  listeners: [{name: default, hostname: "*.opssec.in", port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http}
spec:
  parentRefs: [{name: gateway}]
  hostnames: ["appb.opssec.in"]
  rules: [{backendRefs: [{name: appb-v1, port: 8000}]}]
`

// BenchmarkGatewayVsDirect sends the same GET from the same client to the same app, one request
// at a time on a keep-alive connection, alternately (1) straight to appb-v1's HBONE server over
// HBONE, as a source ztunnel does, and (2) as a plain HTTP client outside the mesh to the
// embedded ingress gateway, which sends it over HBONE with its own identity to the embedded
// waypoint (istio.io/ingress-use-waypoint), which sends it over HBONE to the same server. It
// reports both rates and gateway/direct. Peers: the real gateway and waypoint packages,
// xdsserver's translations, ztunnel/hbone servers and clients.
func BenchmarkGatewayVsDirect(b *testing.B) {
	f := setupTraffic(b, 1)
	f.apply(b, ingress) // the waypoint routes with it
	m := buildMesh(b, f.a.render(f.tmpl+"\n---\n"+ingress))
	r := waypointxds.Translate(m, waypointxds.Options{})
	res := r.Waypoints["default/gateway"]
	if res == nil {
		b.Fatal("no resources for the gateway")
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	if _, err := identity.WriteSVID(f.p.dir, f.p.svid(b, "default", "gateway-istio")); err != nil {
		b.Fatal(err)
	}
	wpHBONE := netip.AddrPortFrom(f.a.of("waypoint"), 15008).String()
	g, err := gateway.Start(context.Background(), gateway.Options{
		NodeID:   "router~" + f.a.of("gateway").String() + "~gateway.default~default.svc.cluster.local",
		Identity: identity.NewDirSource(f.p.dir, td), ServiceAccount: "gateway-istio",
		ListenAddress: func(uint32) string { return "127.0.0.1:0" },
		// The embedded waypoint listens on a random port of its address, not 15008.
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == wpHBONE {
				addr = f.wp.Addr().String()
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Stop()
	by := res.ByType()
	for _, typ := range gateway.Types {
		in := map[string]proto.Message{}
		switch typ {
		case gateway.AddressType:
			in = wds.Translate(m, wds.Options{}).ByType()[typ]
		default:
			in = by[typ]
		}
		anys := map[string]*anypb.Any{}
		for name, msg := range in {
			a, err := anypb.New(msg)
			if err != nil {
				b.Fatal(err)
			}
			anys[name] = a
		}
		if err := g.Store().Apply(typ, anys); err != nil {
			b.Fatal(err)
		}
	}
	url := "http://" + g.Addr(80).String() + "/"
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}}
	viaGateway := func() int {
		req, _ := http.NewRequest("GET", url, nil)
		req.Host = "appb.opssec.in"
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	dc, err := f.waypoint.client.Dial(context.Background(), hbone.Target{
		Source: f.p.svid(b, "default", "appa"), Address: netip.AddrPortFrom(f.a.of("appb-v1"), 15008),
		Identities: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/appb")},
		Authority:  netip.AddrPortFrom(f.a.of("appb-v1"), 8080).String(),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer dc.Close()
	direct := &stream{c: dc, br: bufio.NewReader(dc), host: "appb-v1:8000"}
	if code, body := direct.do(b, "GET", "/", ""); code != 200 {
		b.Fatalf("direct warm-up: %d %q", code, body)
	}
	if code := viaGateway(); code != 200 {
		b.Fatalf("gateway warm-up: %d", code)
	}
	eventually(b, "the waypoint's log line of the gateway's request", func() bool {
		for _, e := range f.log.entries(b) {
			if logField(e, "downstream_peer_uri_san") == "spiffe://cluster.local/ns/default/sa/gateway-istio" {
				return true
			}
		}
		return false
	})
	var dt, gt time.Duration
	b.ResetTimer()
	odd := false
	for b.Loop() {
		t0 := time.Now()
		if odd = !odd; odd {
			if code, _ := direct.do(b, "GET", "/", ""); code != 200 {
				b.Fatalf("direct GET = %d", code)
			}
			t1 := time.Now()
			if code := viaGateway(); code != 200 {
				b.Fatalf("gateway GET = %d", code)
			}
			dt += t1.Sub(t0)
			gt += time.Since(t1)
		} else {
			if code := viaGateway(); code != 200 {
				b.Fatalf("gateway GET = %d", code)
			}
			t1 := time.Now()
			if code, _ := direct.do(b, "GET", "/", ""); code != 200 {
				b.Fatalf("direct GET = %d", code)
			}
			gt += t1.Sub(t0)
			dt += time.Since(t1)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/dt.Seconds(), "direct-req/s")
	b.ReportMetric(float64(b.N)/gt.Seconds(), "gateway-req/s")
	b.ReportMetric(dt.Seconds()/gt.Seconds(), "gateway/direct")
	b.ReportMetric(0, "ns/op")
}
