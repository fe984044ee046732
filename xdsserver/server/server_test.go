package server_test

import (
	"context"
	"maps"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/server"
	"github.com/goambient/goambient/xdsserver/source/files"
	"github.com/goambient/goambient/xdsserver/wds"
	"github.com/goambient/goambient/ztunnel/state"
	"github.com/goambient/goambient/ztunnel/xds"
)

const (
	blueUID   = "Kubernetes//Pod/handson/handson-blue"
	svcName   = "handson/handson.handson.svc.cluster.local"
	policyKey = "handson/layer4-authz"
	timeout   = 10 * time.Second
)

var examples = filepath.Join("..", "..", "manifests", "examples", "handson")

// resources translates handson's mesh.yaml (and its L4 policy when withPolicy) with the
// loopback placement.
func resources(t *testing.T, withPolicy bool) map[string]map[string]proto.Message {
	t.Helper()
	paths := []string{filepath.Join(examples, "mesh.yaml")}
	if withPolicy {
		paths = append(paths, filepath.Join(examples, "L4-authorization-policy.yaml"))
	}
	cfg := model.DefaultConfig()
	cfg.Placement = model.LoopbackPlacement
	m, err := files.New(files.Options{Paths: paths, Model: cfg}).Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Errors) > 0 {
		t.Fatalf("mesh errors: %v", m.Errors)
	}
	return wds.Translate(m, wds.Options{}).ByType()
}

// recorder keeps what the server saw and sent.
type recorder struct {
	mu       sync.Mutex
	requests []*discovery.DeltaDiscoveryRequest
	sent     map[string][]string // type URL → names of resources sent
	removed  map[string][]string
	nack     chan struct{}
}

func newRecorder() *recorder {
	return &recorder{sent: map[string][]string{}, removed: map[string][]string{}, nack: make(chan struct{}, 16)}
}

func (r *recorder) options() server.Options {
	return server.Options{
		Registerer: prometheus.NewRegistry(),
		OnDeltaRequest: func(_ int64, req *discovery.DeltaDiscoveryRequest) {
			r.mu.Lock()
			r.requests = append(r.requests, proto.Clone(req).(*discovery.DeltaDiscoveryRequest))
			r.mu.Unlock()
			if req.GetErrorDetail() != nil {
				r.nack <- struct{}{}
			}
		},
		OnDeltaResponse: func(_ int64, resp *discovery.DeltaDiscoveryResponse) {
			r.mu.Lock()
			defer r.mu.Unlock()
			for _, res := range resp.GetResources() {
				r.sent[resp.GetTypeUrl()] = append(r.sent[resp.GetTypeUrl()], res.GetName())
			}
			r.removed[resp.GetTypeUrl()] = append(r.removed[resp.GetTypeUrl()], resp.GetRemovedResources()...)
		},
	}
}

// reset forgets what was sent so far.
func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent, r.removed, r.requests = map[string][]string{}, map[string][]string{}, nil
}

func (r *recorder) snapshot() (sent, removed map[string][]string, reqs []*discovery.DeltaDiscoveryRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.sent), maps.Clone(r.removed), append([]*discovery.DeltaDiscoveryRequest(nil), r.requests...)
}

func startServer(t *testing.T, addr string, opts server.Options, res map[string]map[string]proto.Message) (*server.Server, string) {
	t.Helper()
	srv, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Set(res)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return srv, l.Addr().String()
}

func startClient(t *testing.T, addr string) (*xds.Client, *state.Store) {
	t.Helper()
	store := state.NewStore(nil)
	c, err := xds.New(xds.Options{
		Address: addr, Store: store, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		Node: xds.Node{IP: "127.0.0.1", PodName: "ztunnel-1", Namespace: "istio-system", NodeName: "node-1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return c, store
}

// waitState waits until the store's State satisfies ok.
func waitState(t *testing.T, store *state.Store, what string, ok func(*state.State) bool) *state.State {
	t.Helper()
	ch := make(chan *state.State, 64)
	cancel := store.Subscribe(func(s *state.State) {
		select {
		case ch <- s:
		default: // the test re-reads Load below
		}
	})
	defer cancel()
	deadline := time.After(timeout)
	for {
		if st := store.Load(); ok(st) {
			return st
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for: %s", what)
		}
	}
}

func hasAuthz(st *state.State, key string) bool {
	for _, a := range st.Resources().Authorizations {
		if a.GetNamespace()+"/"+a.GetName() == key {
			return true
		}
	}
	return false
}

func full(st *state.State) bool {
	return st.Workload(blueUID) != nil && st.Service(svcName) != nil && hasAuthz(st, policyKey)
}

// withoutPolicy: the policy is gone and handson-blue no longer lists it.
func withoutPolicy(st *state.State) bool {
	w := st.Workload(blueUID)
	return w != nil && len(w.GetAuthorizationPolicies()) == 0 && st.Service(svcName) != nil && !hasAuthz(st, policyKey)
}

// changed lists the names whose resource differs between two ByType maps (added or modified).
func changed(a, b map[string]proto.Message) []string {
	var out []string
	for n, m := range b {
		if o, ok := a[n]; !ok || !proto.Equal(o, m) {
			out = append(out, n)
		}
	}
	return out
}

func TestDeltaUpdateAndNACK(t *testing.T) {
	withP, noP := resources(t, true), resources(t, false)
	rec := newRecorder()
	srv, addr := startServer(t, "127.0.0.1:0", rec.options(), withP)
	client, store := startClient(t, addr)

	waitState(t, store, "handson-blue, the handson service and handson/layer4-authz", full)
	select {
	case <-client.Synced():
	case <-time.After(timeout):
		t.Fatal("not synced")
	}
	sent, _, _ := rec.snapshot()
	if got, want := len(sent[wds.AddressType]), len(withP[wds.AddressType]); got != want {
		t.Errorf("first push sent %d addresses, want %d", got, want)
	}
	if got := srv.Stats().Clients; got != 1 {
		t.Errorf("connected clients = %d, want 1", got)
	}

	// A one-policy change: only the policy's removal and the workload that listed it go out.
	rec.reset()
	srv.Set(noP)
	waitState(t, store, "the policy removed", withoutPolicy)
	sent, removed, _ := rec.snapshot()
	wantChanged := changed(withP[wds.AddressType], noP[wds.AddressType])
	if len(wantChanged) != 1 || wantChanged[0] != blueUID {
		t.Fatalf("test premise: removing the policy should change only %s, changed %v", blueUID, wantChanged)
	}
	if got := sent[wds.AddressType]; len(got) != 1 || got[0] != blueUID {
		t.Errorf("addresses resent after a one-policy change: %v, want only [%s] (of %d)", got, blueUID, len(noP[wds.AddressType]))
	}
	if got := sent[wds.AuthorizationType]; len(got) != 0 {
		t.Errorf("authorizations sent: %v, want none", got)
	}
	if got := removed[wds.AuthorizationType]; len(got) != 1 || got[0] != policyKey {
		t.Errorf("removed authorizations: %v, want [%s]", got, policyKey)
	}

	// A workload the client cannot build (a 3-byte address): NACK, last good state kept.
	good := store.Load()
	bad := maps.Clone(noP)
	bad[wds.AddressType] = maps.Clone(noP[wds.AddressType])
	a := proto.Clone(noP[wds.AddressType][blueUID]).(*workloadapi.Address)
	a.GetWorkload().Addresses = [][]byte{{127, 10, 0}}
	bad[wds.AddressType][blueUID] = a
	srv.Set(bad)
	select {
	case <-rec.nack:
	case <-time.After(timeout):
		t.Fatal("no NACK")
	}
	if got := srv.Stats().NACKs; got != 1 {
		t.Errorf("server NACKs = %d, want 1", got)
	}
	if client.LastError() == nil {
		t.Error("client LastError is nil after a NACK")
	}
	if store.Load() != good {
		t.Error("the store changed after a rejected update")
	}
	if got := client.Stats().NACKs; got != 1 {
		t.Errorf("client NACKs = %d, want 1", got)
	}
	_, _, reqs := rec.snapshot()
	var detail string
	for _, r := range reqs {
		if r.GetErrorDetail() != nil {
			detail = r.GetErrorDetail().GetMessage()
		}
	}
	t.Logf("NACK error_detail: %s", detail)
	if detail == "" {
		t.Error("NACK without error_detail message")
	}

	// Fixed again: accepted.
	srv.Set(noP)
	waitState(t, store, "a new state after the fix", func(st *state.State) bool { return st != good })
	if err := client.LastError(); err != nil {
		t.Errorf("LastError after the fix: %v", err)
	}
}

func TestReconnectResumes(t *testing.T) {
	withP, noP := resources(t, true), resources(t, false)
	rec1 := newRecorder()
	srv1, addr := startServer(t, "127.0.0.1:0", rec1.options(), withP)
	client, store := startClient(t, addr)
	waitState(t, store, "the first state", full)
	known := map[string]map[string]string{}
	for _, typ := range xds.Types {
		known[typ] = client.Versions(typ)
	}
	if len(known[wds.AddressType]) != len(withP[wds.AddressType]) {
		t.Fatalf("client knows %d addresses, want %d", len(known[wds.AddressType]), len(withP[wds.AddressType]))
	}

	srv1.Stop()
	// The client keeps its last good state while the server is away.
	if !full(store.Load()) {
		t.Fatal("state lost when the server went away")
	}

	// A new server on the same address, whose mesh lost the policy meanwhile.
	rec2 := newRecorder()
	srv2, _ := startServer(t, addr, rec2.options(), noP)
	waitState(t, store, "converged on the new server's mesh", withoutPolicy)

	sent, removed, reqs := rec2.snapshot()
	seen := map[string]bool{}
	for _, r := range reqs {
		if r.GetResponseNonce() != "" {
			continue
		}
		seen[r.GetTypeUrl()] = true
		if !maps.Equal(r.GetInitialResourceVersions(), known[r.GetTypeUrl()]) {
			t.Errorf("%s: initial_resource_versions = %v, want %v", r.GetTypeUrl(), r.GetInitialResourceVersions(), known[r.GetTypeUrl()])
		}
		if len(r.GetResourceNamesSubscribe()) != 1 || r.GetResourceNamesSubscribe()[0] != "*" {
			t.Errorf("%s: subscribe %v, want [*]", r.GetTypeUrl(), r.GetResourceNamesSubscribe())
		}
	}
	for _, typ := range xds.Types {
		if !seen[typ] {
			t.Errorf("no initial request for %s on the new server", typ)
		}
	}
	if got := sent[wds.AddressType]; len(got) != 1 || got[0] != blueUID {
		t.Errorf("after resuming, addresses sent: %v, want only [%s]", got, blueUID)
	}
	if got := removed[wds.AuthorizationType]; len(got) != 1 || got[0] != policyKey {
		t.Errorf("after resuming, removed authorizations: %v, want [%s]", got, policyKey)
	}
	if got := srv2.Stats().Streams; got != 1 {
		t.Errorf("streams on the new server = %d, want 1", got)
	}
	if got := client.Stats().Connects; got < 2 {
		t.Errorf("client connects = %d, want ≥ 2", got)
	}
}
