// Package server serves Istio's workload API (istio.workload.Address, istio.security.Authorization) to ztunnels over gRPC delta ADS, and each waypoint Envoy its own LDS/RDS/CDS/EDS/ECDS/SDS over ADS (SotW or delta), with go-control-plane.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
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
	xds       xds.Server
	ctx       context.Context
	cancel    context.CancelFunc
	metrics   *metrics

	mu      sync.Mutex // serialises Set and SetWaypoints, guards wp
	current map[string]map[string]proto.Message
	wp      waypoints
	ready   atomic.Bool

	grpcMu sync.Mutex
	grpc   *grpc.Server

	pushes, sent, removed, nacks, clients, streams atomic.Int64
}

// New returns a Server with no resources (Ready reports false until the first Set).
func New(opts Options) (*Server, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, log: log, caches: map[string]*cache.LinearCache{}, current: map[string]map[string]proto.Message{},
		wp: waypoints{nodes: map[string]int{}, streams: map[streamKey]string{}}}
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
		s.current[t] = map[string]proto.Message{}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.xds = xds.NewServer(s.ctx, mux, s.callbacks())
	return s, nil
}

// SetResources makes r what every ztunnel receives.
func (s *Server) SetResources(r *wds.Resources) { s.Set(r.ByType()) }

// Set makes byType (type URL → resource name → resource, as wds.Resources.ByType gives it)
// what every ztunnel receives. Only the resources that differ from the previous Set are
// updated in the caches, so connected clients get a delta of what changed. Types that are not
// served are ignored. The messages must not be modified afterwards.
func (s *Server) Set(byType map[string]map[string]proto.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range Types {
		next := byType[t]
		prev := s.current[t]
		update := map[string]types.Resource{}
		var del []string
		for name, res := range next {
			if old, ok := prev[name]; !ok || !proto.Equal(old, res) {
				update[name] = res
			}
		}
		for name := range prev {
			if _, ok := next[name]; !ok {
				del = append(del, name)
			}
		}
		if len(update) == 0 && len(del) == 0 {
			continue
		}
		if err := s.caches[t].UpdateResources(update, del); err != nil {
			s.log.Error("cache update", "type", t, "error", err.Error())
		}
		s.current[t] = maps.Clone(next)
		if s.current[t] == nil {
			s.current[t] = map[string]proto.Message{}
		}
		s.log.Debug("resources updated", "type", t, "updated", len(update), "removed", len(del), "total", len(next))
	}
	for _, t := range Types {
		s.metrics.resources.WithLabelValues(t).Set(float64(len(s.current[t])))
	}
	s.ready.Store(true)
}

// Ready reports whether Set was called once (the server has a mesh to serve).
func (s *Server) Ready() bool { return s.ready.Load() }

// Register adds the ADS service to a gRPC server (for callers that own theirs).
func (s *Server) Register(g grpc.ServiceRegistrar) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
}

// Serve serves plaintext gRPC on l until Stop. It returns nil after Stop.
func (s *Server) Serve(l net.Listener, opts ...grpc.ServerOption) error {
	g := grpc.NewServer(opts...)
	s.Register(g)
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

func (s *Server) callbacks() xds.CallbackFuncs {
	return xds.CallbackFuncs{
		DeltaStreamOpenFunc: func(ctx context.Context, id int64, typeURL string) error {
			s.clients.Add(1)
			s.streams.Add(1)
			s.metrics.clients.Inc()
			s.log.Debug("stream opened", "stream", id)
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, node *core.Node) {
			s.clients.Add(-1)
			s.metrics.clients.Dec()
			if !s.envoyStreamClosed(streamKey{delta: true, id: id}) {
				s.log.Info("ztunnel disconnected", "stream", id, "node", node.GetId())
			}
		},
		// State-of-the-world ADS: only Envoy uses it (ztunnel speaks delta).
		StreamOpenFunc: func(ctx context.Context, id int64, typeURL string) error {
			s.clients.Add(1)
			s.streams.Add(1)
			s.metrics.clients.Inc()
			return nil
		},
		StreamClosedFunc: func(id int64, node *core.Node) {
			s.clients.Add(-1)
			s.metrics.clients.Dec()
			s.envoyStreamClosed(streamKey{id: id})
		},
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			s.envoyStream(streamKey{id: id}, req.GetNode(), req.GetTypeUrl())
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
			s.envoyStream(streamKey{delta: true, id: id}, req.GetNode(), req.GetTypeUrl())
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
