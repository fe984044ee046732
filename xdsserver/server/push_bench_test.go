package server_test

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/goambient/goambient/xdsserver/meshgen"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/server"
	"github.com/goambient/goambient/xdsserver/wds"
)

// benchClients is how many delta clients (ztunnels) the push benchmark connects.
const benchClients = 100

// benchEvent is one response a bench client received (and ACKed).
type benchEvent struct {
	client  int
	typeURL string
	names   []string
	removed int
}

// runBenchClient is a minimal delta ADS client: it subscribes to both workload API types
// (wildcard), ACKs every response without decoding the resources, and reports each response
// on events. Unlike ztunnel's client it builds no state, so 100 of them fit in one process.
func runBenchClient(ctx context.Context, addr string, id int, events chan<- benchEvent) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		return err
	}
	defer conn.Close()
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	for i, t := range server.Types {
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: []string{"*"}}
		if i == 0 {
			req.Node = &core.Node{Id: fmt.Sprintf("ztunnel~127.0.0.1~ztunnel-%d.istio-system~istio-system.svc.cluster.local", id)}
		}
		if err := s.Send(req); err != nil {
			return err
		}
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
		ev := benchEvent{client: id, typeURL: resp.GetTypeUrl(), removed: len(resp.GetRemovedResources())}
		for _, r := range resp.GetResources() {
			ev.names = append(ev.names, r.GetName())
		}
		select {
		case events <- ev:
		case <-ctx.Done():
			return nil
		}
	}
}

// cpuTime is the CPU time (user and system) the process has used: server and clients run in
// it, and on a shared machine it says more than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pushMeshes are the generated mesh of the targets and the same mesh with one policy
// changed, translated once for every run of the benchmark.
var pushMeshes = sync.OnceValues(func() ([2]map[string]map[string]proto.Message, error) {
	var out [2]map[string]map[string]proto.Message
	for i := range out {
		o := meshgen.Default
		o.Variant = i
		set, err := meshgen.Generate(o)
		if err != nil {
			return out, err
		}
		m, err := model.Build(set, model.DefaultConfig())
		if err != nil {
			return out, err
		}
		out[i] = wds.Translate(m, wds.Options{}).ByType()
	}
	return out, nil
})

// BenchmarkOnePolicyPush: 100 delta clients connected over loopback gRPC to a server holding
// the mesh of the targets (10,000 pods, 1,000 services, 1,000 policies); each iteration
// changes one policy (Server.Set of the retranslated resources) and waits until all 100
// clients have received the update (after two untimed updates, the first of which also waits
// for the server to finish handling the initial sync's ACKs). The baseline of the same run is the full initial sync of
// the 100 clients. Metrics: ms/update (Set → the 100th client has it; target under 100 ms),
// p50 and max, first-update-ms (the first untimed one), update-bytes/client and full-sync-bytes/client (proto.Size of the delta responses the
// server sent, counted on the server side) and their ratio, full-sync-ms, the largest
// initial response (gRPC clients refuse messages over 4 MiB by default), heap-MB of the
// whole process (server and clients) after the sync, and cpu-ms/update and full-sync-cpu-ms,
// the CPU time the process (server and clients) used, which a busy machine disturbs less
// than wall time.
func BenchmarkOnePolicyPush(b *testing.B) {
	meshes, err := pushMeshes()
	if err != nil {
		b.Fatal(err)
	}
	var sentBytes, maxMsg atomic.Int64
	srv, err := server.New(server.Options{
		Registerer: prometheus.NewRegistry(),
		Limits:     server.Limits{StreamsPerSecond: -1}, // the clients connect at once
		OnDeltaResponse: func(_ int64, resp *discovery.DeltaDiscoveryResponse) {
			n := int64(proto.Size(resp))
			sentBytes.Add(n)
			for m := maxMsg.Load(); n > m && !maxMsg.CompareAndSwap(m, n); m = maxMsg.Load() {
			}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	srv.Set(meshes[0])
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan benchEvent, 4*benchClients)
	var wg sync.WaitGroup
	b.Cleanup(func() {
		cancel()
		srv.Stop()
		wg.Wait()
		if err := <-served; err != nil {
			b.Error(err)
		}
	})

	// The full initial sync: every client gets both types.
	start, syncCPU := time.Now(), cpuTime()
	for i := range benchClients {
		wg.Add(1)
		go func() { defer wg.Done(); _ = runBenchClient(ctx, l.Addr().String(), i, events) }()
	}
	synced := map[int]map[string]bool{}
	deadline := time.After(2 * time.Minute)
	for n := 0; n < benchClients*len(server.Types); {
		select {
		case ev := <-events:
			if synced[ev.client] == nil {
				synced[ev.client] = map[string]bool{}
			}
			if !synced[ev.client][ev.typeURL] {
				synced[ev.client][ev.typeURL] = true
				n++
			}
		case <-deadline:
			b.Fatalf("initial sync: %d of %d responses after 2m", n, benchClients*len(server.Types))
		}
	}
	fullSync, syncCPU := time.Since(start), cpuTime()-syncCPU
	fullBytes := sentBytes.Load()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)

	changedPolicy := meshgen.Default.NamespaceOf(0) + "/" + meshgen.PolicyName(0)
	version := 0
	update := func() time.Duration {
		version++
		t0 := time.Now()
		srv.Set(meshes[version%2])
		timeout := time.After(30 * time.Second)
		for got := 0; got < benchClients; {
			select {
			case ev := <-events:
				if ev.typeURL != wds.AuthorizationType || len(ev.names) != 1 || ev.names[0] != changedPolicy || ev.removed != 0 {
					b.Fatalf("client %d got %s %v (%d removed), want only %s", ev.client, ev.typeURL, ev.names, ev.removed, changedPolicy)
				}
				got++
			case <-timeout:
				b.Fatalf("update %d: %d of %d clients after 30s", version, got, benchClients)
			}
		}
		return time.Since(t0)
	}
	// Two updates untimed: the server finishes handling the initial sync's ACKs (a new watch
	// per client and type) before the measured updates.
	warm := []time.Duration{update(), update()}
	var updateBytes int64
	var times []time.Duration
	cpu0 := cpuTime()
	b.ResetTimer()
	for b.Loop() {
		before := sentBytes.Load()
		times = append(times, update())
		updateBytes += sentBytes.Load() - before
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/update")
	slices.Sort(times)
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/update")
	b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "p50-ms/update")
	b.ReportMetric(float64(times[len(times)-1].Microseconds())/1000, "max-ms/update")
	b.ReportMetric(float64(warm[0].Microseconds())/1000, "first-update-ms")
	b.ReportMetric(float64(updateBytes)/float64(b.N)/benchClients, "update-bytes/client")
	b.ReportMetric(float64(fullBytes)/benchClients, "full-sync-bytes/client")
	b.ReportMetric(float64(updateBytes)/float64(b.N)/float64(fullBytes), "update/full-bytes")
	b.ReportMetric(float64(fullSync.Microseconds())/1000, "full-sync-ms")
	b.ReportMetric(float64(syncCPU.Microseconds())/1000, "full-sync-cpu-ms")
	b.ReportMetric(float64(maxMsg.Load())/(1<<20), "max-initial-msg-MiB")
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MB")
}

// BenchmarkSetOnePolicy: Server.Set of the target mesh with one policy changed, no client
// connected (what a push costs the server before any client is notified), against the same
// run's baseline: comparing every resource with proto.Equal to the previous Set's, as Set did
// before it compared digests. Metrics: set-ms and proto-equal-ms per push, and their ratio.
func BenchmarkSetOnePolicy(b *testing.B) {
	meshes, err := pushMeshes()
	if err != nil {
		b.Fatal(err)
	}
	srv, err := server.New(server.Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	srv.Set(meshes[0])
	var set, equal time.Duration
	i := 0
	for b.Loop() {
		i++
		t0 := time.Now()
		srv.Set(meshes[i%2])
		t1 := time.Now()
		changed := 0
		for t, next := range meshes[i%2] {
			prev := meshes[(i+1)%2][t]
			for name, m := range next {
				if old, ok := prev[name]; !ok || !proto.Equal(old, m) {
					changed++
				}
			}
		}
		equal += time.Since(t1)
		set += t1.Sub(t0)
		if changed != 1 {
			b.Fatalf("baseline: %d resources changed, want 1", changed)
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(set.Microseconds())/1000/n, "set-ms")
	b.ReportMetric(float64(equal.Microseconds())/1000/n, "proto-equal-ms")
	b.ReportMetric(float64(set)/float64(equal), "set/proto-equal")
}
