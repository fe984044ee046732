// Package server serves Istio's workload API (istio.workload.Address, istio.security.Authorization) to ztunnels over gRPC delta ADS, and each waypoint Envoy its own LDS/RDS/CDS/EDS/ECDS/SDS over ADS (SotW or delta), with go-control-plane.
package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	cplog "github.com/envoyproxy/go-control-plane/pkg/log"
	xds "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/goambient/goambient/xdsserver/wds"
)

// Types are the type URLs served, as ztunnel subscribes to them.
var Types = []string{wds.AddressType, wds.AuthorizationType}

// Options configure a Server.
type Options struct {
	Logger     *slog.Logger          // nil: no logs
	Registerer prometheus.Registerer // where the metrics go; nil: not registered
	// OnDeltaRequest and OnDeltaResponse, when set, see every request received and every
	// response sent (on the stream's goroutine; they must not block or keep the messages).
	OnDeltaRequest  func(streamID int64, req *discovery.DeltaDiscoveryRequest)
	OnDeltaResponse func(streamID int64, resp *discovery.DeltaDiscoveryResponse)
	// Limits bound what clients may cost; zero fields take DefaultLimits' values.
	Limits Limits
}

// Stats are the server's counters since it was created.
type Stats struct {
	Pushes        int64 // delta responses sent
	ResourcesSent int64 // resources in them
	Removed       int64 // removed_resources in them
	NACKs         int64 // requests carrying error_detail
	Clients       int64 // open ADS streams now
	Streams       int64 // ADS streams opened in total
}

// Server is the ADS server. Waypoint Envoys get their own resources from a per-node
// SnapshotCache (waypoints.go; SotW or delta). Every ztunnel receives the same resources:
// one go-control-plane LinearCache per type URL, selected by a MuxCache on the request's type
// URL. A LinearCache versions each resource by the hash of its deterministic encoding, so a
// client gets only the resources that changed, and a client resuming with
// initial_resource_versions gets only what changed while it was away.
type Server struct {
	opts   Options
	log    *slog.Logger
	caches map[string]*cache.LinearCache
	// snapshots serves the Envoy types per node (waypoints.go).
	snapshots cache.SnapshotCache
	xds       *guardedADS
	ctx       context.Context
	cancel    context.CancelFunc
	metrics   *metrics

	mu      sync.Mutex                   // serialises Set and SetWaypoints, guards current, wp and sec
	current map[string]map[string]digest // by type URL and name: what the caches hold
	wp      waypoints
	sec     *secureView // the TLS listener's waypoint side (secure.go); nil until RegisterSecure
	ready   atomic.Bool

	grpcMu sync.Mutex
	grpc   *grpc.Server

	limits   Limits
	limiter  *rate.Limiter // new ADS streams; nil: no limit
	open     atomic.Int64  // ADS streams admitted and not ended, both listeners
	conns    conns         // the connections of Listener's listeners
	refusals refusals

	pushes, sent, removed, nacks, clients, streams atomic.Int64
}

// New returns a Server with no resources (Ready reports false until the first Set).
func New(opts Options) (*Server, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, log: log, caches: map[string]*cache.LinearCache{}, current: map[string]map[string]digest{},
		wp:     waypoints{nodes: map[string]int{}, streams: map[streamKey]string{}},
		limits: opts.Limits.withDefaults(), refusals: refusals{by: map[string]*refusalLog{}}}
	if s.limits.StreamsPerSecond > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(s.limits.StreamsPerSecond), 1)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	cl := cacheLogger(log.With("scope", "xds-cache"))
	// Istio's types go to one LinearCache each (the same for every ztunnel); every other
	// type (Envoy's) to the per-node snapshot cache of the waypoints.
	classify := func(typeURL string) string {
		if slices.Contains(Types, typeURL) {
			return typeURL
		}
		return envoyCache
	}
	s.snapshots = cache.NewSnapshotCache(true, cache.IDHash{}, cl)
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return classify(r.GetTypeUrl()) },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return classify(r.GetTypeUrl()) },
		Caches:        map[string]cache.Cache{envoyCache: s.snapshots},
	}
	for _, t := range Types {
		c := cache.NewLinearCache(t, cache.WithLogger(cl))
		s.caches[t] = c
		mux.Caches[t] = c
		s.current[t] = map[string]digest{}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.xds = &guardedADS{s: s, inner: xds.NewServer(s.ctx, mux, s.callbacks(viewHooks{
		open: func(context.Context, streamKey) {},
		request: func(id streamKey, node *core.Node, typeURL string) error {
			s.envoyStream(id, node, typeURL)
			return nil
		},
		closed: s.envoyStreamClosed,
	}))}
	return s, nil
}

// SetResources makes r what every ztunnel receives.
func (s *Server) SetResources(r *wds.Resources) { s.Set(r.ByType()) }

// Set makes byType (type URL → resource name → resource, as wds.Resources.ByType gives it)
// what every ztunnel receives. Only the resources that differ from the previous Set are
// updated in the caches, so connected clients get a delta of what changed. Types that are not
// served are ignored. The messages must not be modified afterwards.
//
// A resource is unchanged when it is the same message as before, or when its deterministic
// encoding has the same SHA-256 as the previous one's (see digests): each resource is encoded
// once per Set, which costs about half of a proto.Equal against the previous one.
func (s *Server) Set(byType map[string]map[string]proto.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range Types {
		next := byType[t]
		prev := s.current[t]
		names, sums := digests(next, prev, s.log)
		update := map[string]types.Resource{}
		var del []string
		added := 0
		for i, name := range names {
			old, ok := prev[name]
			if !ok {
				added++
			} else if old.ok && sums[i].ok && old.sum == sums[i].sum {
				prev[name] = sums[i] // the same content: remember the newer message
				continue
			}
			update[name] = next[name]
		}
		if len(prev) > len(next)-added { // some names of prev are not in next
			for name := range prev {
				if _, ok := next[name]; !ok {
					del = append(del, name)
				}
			}
		}
		if len(update) == 0 && len(del) == 0 {
			continue
		}
		if err := s.caches[t].UpdateResources(update, del); err != nil {
			s.log.Error("cache update", "type", t, "error", err.Error())
		}
		for i, name := range names {
			if _, ok := update[name]; ok {
				prev[name] = sums[i]
			}
		}
		for _, name := range del {
			delete(prev, name)
		}
		s.log.Debug("resources updated", "type", t, "updated", len(update), "removed", len(del), "total", len(next))
	}
	for _, t := range Types {
		s.metrics.resources.WithLabelValues(t).Set(float64(len(s.current[t])))
	}
	s.ready.Store(true)
}

// digest is what Set remembers of a resource it served: the message and the SHA-256 of its
// deterministic encoding (ok false when it could not be encoded: it is then always sent).
type digest struct {
	msg proto.Message
	sum [sha256.Size]byte
	ok  bool
}

// digests returns the names of the resources of next that are not the same message as in
// prev, and their digests. They are encoded and hashed on as many goroutines as there are CPUs
// (each encoding is independent).
func digests(next map[string]proto.Message, prev map[string]digest, log *slog.Logger) ([]string, []digest) {
	var names []string
	for name, m := range next {
		if d, ok := prev[name]; !ok || d.msg != m {
			names = append(names, name)
		}
	}
	sums := make([]digest, len(names))
	workers := min(runtime.GOMAXPROCS(0), max(1, len(names)/256))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			var buf []byte
			opts := proto.MarshalOptions{Deterministic: true}
			for i := w; i < len(names); i += workers {
				m := next[names[i]]
				var err error
				buf, err = opts.MarshalAppend(buf[:0], m)
				if err != nil {
					log.Error("encode resource", "name", names[i], "error", err.Error())
					sums[i] = digest{msg: m}
					continue
				}
				sums[i] = digest{msg: m, sum: sha256.Sum256(buf), ok: true}
			}
		})
	}
	wg.Wait()
	return names, sums
}

// Ready reports whether Set was called once (the server has a mesh to serve).
func (s *Server) Ready() bool { return s.ready.Load() }

// Register adds the plaintext ADS service to a gRPC server (for callers that own theirs; give
// it ServerOptions and serve it on Listener).
func (s *Server) Register(g grpc.ServiceRegistrar) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
}

// Serve serves plaintext gRPC on l until Stop, with the limits (ServerOptions, then opts, on
// Listener(l)). It returns nil after Stop.
func (s *Server) Serve(l net.Listener, opts ...grpc.ServerOption) error {
	g := grpc.NewServer(append(s.ServerOptions(), opts...)...)
	s.Register(g)
	l = s.Listener(l)
	s.grpcMu.Lock()
	if s.ctx.Err() != nil {
		s.grpcMu.Unlock()
		return errors.New("server stopped")
	}
	s.grpc = g
	s.grpcMu.Unlock()
	if err := g.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("xds server: %w", err)
	}
	return nil
}

// Stop closes the listener and every stream at once.
func (s *Server) Stop() {
	s.cancel()
	s.grpcMu.Lock()
	g := s.grpc
	s.grpcMu.Unlock()
	if g != nil {
		g.Stop()
	}
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{
		Pushes: s.pushes.Load(), ResourcesSent: s.sent.Load(), Removed: s.removed.Load(),
		NACKs: s.nacks.Load(), Clients: s.clients.Load(), Streams: s.streams.Load(),
	}
}

// viewHooks are what differs between the plaintext and the secure ADS service: what happens
// when a stream opens, asks for a type (an error ends the stream), and closes (true when it
// was a waypoint's stream).
type viewHooks struct {
	open    func(ctx context.Context, id streamKey)
	request func(id streamKey, node *core.Node, typeURL string) error
	closed  func(id streamKey) bool
}

func (s *Server) callbacks(h viewHooks) xds.CallbackFuncs {
	return xds.CallbackFuncs{
		DeltaStreamOpenFunc: func(ctx context.Context, id int64, typeURL string) error {
			s.clients.Add(1)
			s.streams.Add(1)
			s.metrics.clients.Inc()
			s.log.Debug("stream opened", "stream", id)
			h.open(ctx, streamKey{delta: true, id: id})
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, node *core.Node) {
			s.clients.Add(-1)
			s.metrics.clients.Dec()
			if !h.closed(streamKey{delta: true, id: id}) {
				s.log.Info("ztunnel disconnected", "stream", id, "node", node.GetId())
			}
		},
		// State-of-the-world ADS: only Envoy uses it (ztunnel speaks delta).
		StreamOpenFunc: func(ctx context.Context, id int64, typeURL string) error {
			s.clients.Add(1)
			s.streams.Add(1)
			s.metrics.clients.Inc()
			h.open(ctx, streamKey{id: id})
			return nil
		},
		StreamClosedFunc: func(id int64, node *core.Node) {
			s.clients.Add(-1)
			s.metrics.clients.Dec()
			h.closed(streamKey{id: id})
		},
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			if err := h.request(streamKey{id: id}, req.GetNode(), req.GetTypeUrl()); err != nil {
				return err
			}
			if d := req.GetErrorDetail(); d != nil {
				s.nacks.Add(1)
				s.metrics.nacks.WithLabelValues(req.GetTypeUrl()).Inc()
				s.log.Warn("waypoint rejected config (NACK)", "stream", id, "node", req.GetNode().GetId(), "type", req.GetTypeUrl(),
					"nonce", req.GetResponseNonce(), "error", d.GetMessage())
			}
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			s.pushes.Add(1)
			s.sent.Add(int64(len(resp.GetResources())))
			s.metrics.pushes.WithLabelValues(resp.GetTypeUrl()).Inc()
			s.metrics.sent.WithLabelValues(resp.GetTypeUrl()).Add(float64(len(resp.GetResources())))
		},
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			if err := h.request(streamKey{delta: true, id: id}, req.GetNode(), req.GetTypeUrl()); err != nil {
				return err
			}
			if req.GetNode().GetId() != "" && req.GetResponseNonce() == "" {
				s.log.Info("ztunnel subscribed", "stream", id, "node", req.GetNode().GetId(), "type", req.GetTypeUrl(),
					"initial_resource_versions", len(req.GetInitialResourceVersions()))
			}
			if d := req.GetErrorDetail(); d != nil {
				s.nacks.Add(1)
				s.metrics.nacks.WithLabelValues(req.GetTypeUrl()).Inc()
				s.log.Warn("ztunnel rejected config (NACK)", "stream", id, "node", req.GetNode().GetId(), "type", req.GetTypeUrl(),
					"nonce", req.GetResponseNonce(), "error", d.GetMessage())
			}
			if f := s.opts.OnDeltaRequest; f != nil {
				f(id, req)
			}
			return nil
		},
		StreamDeltaResponseFunc: func(id int64, req *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			s.pushes.Add(1)
			s.sent.Add(int64(len(resp.GetResources())))
			s.removed.Add(int64(len(resp.GetRemovedResources())))
			s.metrics.pushes.WithLabelValues(resp.GetTypeUrl()).Inc()
			s.metrics.sent.WithLabelValues(resp.GetTypeUrl()).Add(float64(len(resp.GetResources())))
			if f := s.opts.OnDeltaResponse; f != nil {
				f(id, resp)
			}
		},
	}
}

// cacheLogger sends go-control-plane's cache logs to slog (its Info is our Debug: it reports
// every watch it evaluates). Messages are formatted only when their level is on: some carry the
// version map of every resource, which on a large mesh cost more than the push itself.
func cacheLogger(l *slog.Logger) cplog.Logger {
	at := func(level slog.Level) func(string, ...any) {
		return func(f string, a ...any) {
			if l.Enabled(context.Background(), level) {
				l.Log(context.Background(), level, fmt.Sprintf(f, a...))
			}
		}
	}
	return cplog.LoggerFuncs{
		DebugFunc: at(slog.LevelDebug),
		InfoFunc:  at(slog.LevelDebug),
		WarnFunc:  at(slog.LevelWarn),
		ErrorFunc: at(slog.LevelError),
	}
}
