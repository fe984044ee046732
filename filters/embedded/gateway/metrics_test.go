package gateway

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	is "github.com/goambient/goambient/filters/istiostats"
)

// recorded is a Recorder that keeps what it is given.
type recorded struct {
	mu   sync.Mutex
	reqs []recordedReq
}

type recordedReq struct {
	l        is.Labels
	reqBytes int64
	rspBytes int64
}

func (r *recorded) Record(l *is.Labels, _ time.Duration, reqBytes, rspBytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, recordedReq{*l, reqBytes, rspBytes})
}

func (r *recorded) all() []recordedReq {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recordedReq(nil), r.reqs...)
}

// TestRequestMetrics: each request the gateway finishes is recorded with Istio's labels as an
// ingress gateway reports (reporter=source, the gateway's own workload and principal as
// source, connection_security_policy unknown): to a pod straight (the destination workload and
// principal from the workload API), through the Service's waypoint (the Service only), and
// without a route (NR, no destination). Peers: the fixture's HBONE servers and the real
// translation's configuration.
func TestRequestMetrics(t *testing.T) {
	rec := &recorded{}
	f := setupWith(t, Limits{}, func(o *Options) { o.Metrics = rec })
	c := plainClient()
	req, _ := http.NewRequest("POST", f.url(t, 80, "http", "/upload"), strings.NewReader("twelve bytes"))
	req.Host = "appa.opssec.in"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	get(t, c, f.url(t, 80, "http", "/"), "appb.opssec.in", "host-is", "b")
	get(t, c, f.url(t, 80, "http", "/"), "nowhere.example.com")
	eventually(t, "three requests recorded", func() bool { return len(rec.all()) == 3 })
	got := rec.all()
	const gw = "spiffe://cluster.local/ns/default/sa/gateway-istio"
	for i, r := range got {
		l := r.l
		if l.Reporter != "source" || l.SourcePrincipal != gw || l.SourceWorkload != "gateway-istio-0" || l.SourceWorkloadNamespace != "default" ||
			l.ConnectionSecurityPolicy != is.Unknown || l.RequestProtocol != "http" {
			t.Errorf("request %d: source labels %+v", i, l)
		}
	}
	if l := got[0].l; l.DestinationService != "appa.default.svc.cluster.local" || l.DestinationServiceName != "appa" || l.DestinationServiceNamespace != "default" ||
		l.DestinationWorkload != "appa" || l.DestinationPrincipal != "spiffe://cluster.local/ns/default/sa/appa" || l.ResponseCode != "200" {
		t.Errorf("to appa: %+v", l)
	}
	if got[0].reqBytes != int64(len("twelve bytes")) || got[0].rspBytes == 0 {
		t.Errorf("to appa: request %d bytes, response %d bytes", got[0].reqBytes, got[0].rspBytes)
	}
	if l := got[1].l; l.DestinationService != "appb.default.svc.cluster.local" || l.DestinationServiceName != "appb" || l.DestinationWorkload != "" || l.ResponseCode != "200" {
		t.Errorf("to appb through its waypoint: %+v", l)
	}
	if l := got[2].l; l.DestinationService != "" || l.ResponseCode != "404" || l.ResponseFlags != "NR" {
		t.Errorf("without a route: %+v", l)
	}
}
