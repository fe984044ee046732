package server

import (
	"context"
	"errors"
	"slices"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	xds "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/goambient/goambient/xdsserver/ca"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

// SecureOptions configure the ADS service of the TLS listener (RegisterSecure).
type SecureOptions struct {
	// Authenticator turns the bearer token of a stream (gRPC metadata "authorization: Bearer
	// <token>", as the CA reads it) into a caller. Required.
	Authenticator ca.Authenticator
	// Secrets returns the SDS secrets of waypoint namespace/name (waypointxds.SecretDefault and
	// SecretRootCA). It is called with the server's lock held, once per waypoint after each
	// SetWaypoints or RefreshSecrets while one of its Envoys is connected: it should return the
	// same secrets until they need renewing (an unchanged secret is not sent again). Required.
	Secrets func(namespace, name string) ([]*tlsv3.Secret, error)
}

// secureView is the waypoint side of the TLS listener: its own SnapshotCache keyed by node id,
// whose snapshots are the waypoint's resources plus its SDS secrets. A stream may ask for Envoy
// types only when its token authenticates the waypoint its node belongs to, so every stream
// that shares a node's snapshot was authorized for that waypoint.
type secureView struct {
	opts    SecureOptions
	snaps   cache.SnapshotCache
	streams map[streamKey]*secureStream // every open stream of the TLS listener
	nodes   map[string]int              // node id → open admitted Envoy streams
	granted map[string]string           // node id → the waypoint its streams were admitted for
	built   map[string]*cache.Snapshot  // waypoint → snapshot with secrets, since the last push
}

// secureStream is an open stream of the TLS listener.
type secureStream struct {
	caller   *ca.Caller // authenticated when the stream opened
	nodeID   string     // the node id of its first request that named one
	workload bool       // admitted for the workload API
	node     string     // node id once admitted for Envoy types
}

// callerKey is the context key of a secure stream's authenticated caller.
type callerKey struct{}

// RegisterSecure adds to g (the TLS listener's gRPC server; give it ServerOptions and serve it
// on Listener) an ADS service that serves the same workload API as the plaintext one, and to
// each waypoint Envoy its resources plus the SDS secrets "default" (its SVID and private key)
// and "ROOTCA" (the trust bundle). The plaintext service never sends secrets.
//
// Every stream is authenticated when it opens, by its bearer token: without a token, or with
// one the Authenticator does not accept, it ends with Unauthenticated before anything is sent.
// Then each type is authorized on the stream's first request for it, and a refusal ends the
// stream with PermissionDenied: the workload API goes to ztunnels (whose node metadata
// NODE_NAME must be the node of their token) and waypoints; Envoy types go to a waypoint
// (ca.KindWaypoint) whose node id belongs to that waypoint. A stream keeps the node id it
// was authorized with. It may be called once.
func (s *Server) RegisterSecure(g grpc.ServiceRegistrar, opts SecureOptions) error {
	if opts.Authenticator == nil || opts.Secrets == nil {
		return errors.New("server: SecureOptions.Authenticator and Secrets are required")
	}
	s.mu.Lock()
	if s.sec != nil {
		s.mu.Unlock()
		return errors.New("server: RegisterSecure called twice")
	}
	v := &secureView{
		opts:    opts,
		snaps:   cache.NewSnapshotCache(true, cache.IDHash{}, cacheLogger(s.log.With("scope", "xds-cache-secure"))),
		streams: map[streamKey]*secureStream{}, nodes: map[string]int{},
		granted: map[string]string{}, built: map[string]*cache.Snapshot{},
	}
	s.sec = v
	s.mu.Unlock()
	classify := func(typeURL string) string {
		if slices.Contains(Types, typeURL) {
			return typeURL
		}
		return envoyCache
	}
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return classify(r.GetTypeUrl()) },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return classify(r.GetTypeUrl()) },
		Caches:        map[string]cache.Cache{envoyCache: v.snaps},
	}
	for t, c := range s.caches {
		mux.Caches[t] = c
	}
	srv := xds.NewServer(s.ctx, mux, s.callbacks(viewHooks{
		open:    s.secureOpen,
		request: s.secureRequest,
		closed:  s.secureClosed,
	}))
	discovery.RegisterAggregatedDiscoveryServiceServer(g, &guardedADS{s: s, inner: srv, authn: s.authenticate})
	return nil
}

// RefreshSecrets asks SecureOptions.Secrets again for every waypoint with a connected secure
// Envoy; changed secrets (a renewed SVID) are pushed. Call it periodically.
func (s *Server) RefreshSecrets() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sec == nil {
		return
	}
	s.sec.built = map[string]*cache.Snapshot{}
	for node := range s.sec.nodes {
		s.assignSecure(node)
	}
}

// authenticate accepts a secure stream whose bearer token the Authenticator accepts, and
// returns its context with the caller; otherwise Unauthenticated (the reason is logged, never
// told to the client).
func (s *Server) authenticate(ctx context.Context) (context.Context, error) {
	remote := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		remote = p.Addr.String()
	}
	tok, err := ca.BearerToken(ctx)
	var caller *ca.Caller
	if err == nil {
		caller, err = s.sec.opts.Authenticator.Authenticate(ctx, tok)
	}
	if err != nil || caller == nil {
		why := "no caller"
		if err != nil {
			why = err.Error()
		}
		s.refuse(refusedUnauthenticated, "secure xds stream refused: not authenticated", "remote", remote, "error", why)
		return nil, status.Error(codes.Unauthenticated, "authentication failure")
	}
	return context.WithValue(ctx, callerKey{}, caller), nil
}

// secureOpen records a secure stream and its caller (authenticated before it opened).
func (s *Server) secureOpen(ctx context.Context, id streamKey) {
	c, _ := ctx.Value(callerKey{}).(*ca.Caller)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sec.streams[id] = &secureStream{caller: c}
}

// nodeName is the NODE_NAME of a node's metadata, which Istio's ztunnel sends.
func nodeName(n *core.Node) string {
	return n.GetMetadata().GetFields()["NODE_NAME"].GetStringValue()
}

// secureRequest authorizes a secure stream's request: the first one for the workload API and
// the first one for an Envoy type are checked against the caller; a request naming another
// node than the stream's first is refused. A refusal ends the stream with PermissionDenied.
func (s *Server) secureRequest(id streamKey, node *core.Node, typeURL string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.sec
	st := v.streams[id]
	if st == nil || st.caller == nil {
		return status.Error(codes.Internal, "unknown stream")
	}
	caller := st.caller
	nodeID := node.GetId()
	refuse := func(why string, args ...any) error {
		s.refuse(refusedPermission, "secure xds stream refused: "+why,
			append([]any{"stream", id.id, "delta", id.delta, "node", nodeID, "type", typeURL, "caller", caller.String()}, args...)...)
		return status.Error(codes.PermissionDenied, "permission denied")
	}
	if node != nil {
		if st.nodeID == "" {
			st.nodeID = nodeID
		} else if nodeID != st.nodeID {
			return refuse("the stream changed its node id", "first_node", st.nodeID)
		}
	}
	if slices.Contains(Types, typeURL) {
		if st.workload {
			return nil
		}
		switch caller.Kind {
		case ca.KindZtunnel:
			if got := nodeName(node); got != caller.Node {
				return refuse("a ztunnel's NODE_NAME must be the node of its token", "node_name", got, "token_node", caller.Node)
			}
		case ca.KindWaypoint:
		default:
			return refuse("the workload API is served to ztunnels and waypoints only")
		}
		st.workload = true
		return nil
	}
	if st.node != "" {
		return nil // admitted on its first request for an Envoy type
	}
	if caller.Kind != ca.KindWaypoint {
		return refuse("Envoy resources are served only to an authenticated waypoint")
	}
	if nodeID == "" {
		return refuse("no node id")
	}
	want := caller.Namespace + "/" + caller.Name
	if g, ok := v.granted[nodeID]; ok && g != want {
		return refuse("the node is connected as another waypoint", "waypoint", g)
	}
	if s.wp.res != nil {
		if key, err := s.wp.res.WaypointForNode(nodeID); err == nil && key != want {
			return refuse("the node belongs to another waypoint", "waypoint", key)
		}
	}
	st.node = nodeID
	v.granted[nodeID] = want
	v.nodes[nodeID]++
	if v.nodes[nodeID] == 1 {
		s.log.Info("waypoint connected (secure)", "stream", id.id, "delta", id.delta, "node", nodeID, "caller", caller.String())
		s.assignSecure(nodeID)
	}
	return nil
}

// secureClosed forgets a secure stream; the node's snapshot goes with its last stream.
func (s *Server) secureClosed(id streamKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.sec
	st := v.streams[id]
	delete(v.streams, id)
	if st == nil || st.node == "" {
		return false
	}
	node := st.node
	if v.nodes[node]--; v.nodes[node] <= 0 {
		delete(v.nodes, node)
		delete(v.granted, node)
		v.snaps.ClearSnapshot(node)
		s.log.Info("waypoint disconnected (secure)", "stream", id.id, "delta", id.delta, "node", node)
	}
	return true
}

// assignSecure gives node the snapshot of its waypoint with the secrets, when the node still
// belongs to the waypoint its streams were authorized for; otherwise an empty snapshot (fail
// closed). Called with s.mu held.
func (s *Server) assignSecure(node string) {
	v := s.sec
	if s.wp.res == nil {
		return // no mesh yet: the node waits
	}
	key, err := s.wp.res.WaypointForNode(node)
	if err == nil && key != v.granted[node] {
		err = errString("the node now belongs to waypoint " + key + ", its streams were authorized for " + v.granted[node])
	}
	var snap *cache.Snapshot
	if err == nil {
		snap, err = s.secureSnapshot(key)
	}
	if err != nil {
		if empty, eerr := snapshot(&waypointxds.WaypointResources{}); eerr == nil {
			_ = v.snaps.SetSnapshot(context.Background(), node, empty)
		}
		s.log.Warn("secure waypoint node: no resources sent", "node", node, "error", err.Error())
		return
	}
	if err := v.snaps.SetSnapshot(context.Background(), node, snap); err != nil {
		s.log.Error("set secure waypoint snapshot", "node", node, "waypoint", key, "error", err.Error())
	}
}

// secureSnapshot is waypoint key's snapshot with its secrets, built once per SetWaypoints or
// RefreshSecrets. Called with s.mu held.
func (s *Server) secureSnapshot(key string) (*cache.Snapshot, error) {
	v := s.sec
	if snap := v.built[key]; snap != nil {
		return snap, nil
	}
	w := s.wp.res.Waypoints[key]
	if w == nil || s.wp.snaps[key] == nil {
		return nil, errNoSnapshot
	}
	secrets, err := v.opts.Secrets(w.Namespace, w.Name)
	if err != nil {
		return nil, errString("secrets of waypoint " + key + ": " + err.Error())
	}
	ws := *w
	ws.Secrets = append(secrets, w.Credentials...) // an ingress gateway's certificates: here only
	snap, err := snapshot(&ws)
	if err != nil {
		return nil, err
	}
	v.built[key] = snap
	return snap, nil
}

// WaypointOfSecureNode returns the namespace/name of the waypoint whose resources (and
// secrets) a node receives on the secure listener, or "" when it receives none.
func (s *Server) WaypointOfSecureNode(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sec == nil || s.wp.res == nil || s.sec.nodes[id] == 0 {
		return ""
	}
	key, err := s.wp.res.WaypointForNode(id)
	if err != nil || key != s.sec.granted[id] {
		return ""
	}
	return key
}
