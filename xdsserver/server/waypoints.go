package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/goambient/goambient/xdsserver/waypointxds"
)

// envoyCache is the MuxCache key of the per-node snapshot cache that serves waypoints.
const envoyCache = "envoy"

// waypoints is the per-node side of the server: Envoy waypoints each get the resources of
// their own waypoint, from a go-control-plane SnapshotCache keyed by node id. A node is
// mapped to a waypoint when it opens a stream and again on every SetWaypoints, so a waypoint
// that connects before its Gateway exists gets its resources as soon as it does.
type waypoints struct {
	res     *waypointxds.Resources
	snaps   map[string]*cache.Snapshot // by waypoint namespace/name
	nodes   map[string]int             // node id → open Envoy streams
	streams map[streamKey]string       // Envoy stream → node id
}

// streamKey names a stream: go-control-plane numbers SotW and delta streams separately.
type streamKey struct {
	delta bool
	id    int64
}

// SetWaypoints makes r what the waypoints' Envoys receive, each the resources of its own
// waypoint. A type whose resources did not change keeps its version, so a policy change
// reaches Envoy as an ECDS update, and its listeners are not sent again.
func (s *Server) SetWaypoints(r *waypointxds.Resources) {
	s.mu.Lock()
	defer s.mu.Unlock()
	snaps := map[string]*cache.Snapshot{}
	count := map[string]int{}
	for key, w := range r.Waypoints {
		for t, byName := range w.ByType() {
			count[t] += len(byName)
		}
		snap, err := snapshot(w)
		if err != nil {
			s.log.Error("waypoint snapshot", "waypoint", key, "error", err.Error())
			continue
		}
		if err := snap.Consistent(); err != nil {
			s.log.Warn("waypoint resources are not consistent", "waypoint", key, "error", err.Error())
		}
		snaps[key] = snap
	}
	s.wp.res, s.wp.snaps = r, snaps
	for node := range s.wp.nodes {
		s.assign(node)
	}
	if s.sec != nil {
		s.sec.built = map[string]*cache.Snapshot{}
		for node := range s.sec.nodes {
			s.assignSecure(node)
		}
	}
	for _, t := range waypointxds.Types { // summed over the waypoints
		s.metrics.resources.WithLabelValues(t).Set(float64(count[t]))
	}
}

// assign gives node the snapshot of its waypoint, or none (fail closed) when it has none.
// Called with s.mu held.
func (s *Server) assign(node string) {
	if s.wp.res == nil {
		return // no mesh yet: the node waits
	}
	key, err := s.wp.res.WaypointForNode(node)
	if err == nil && s.wp.snaps[key] == nil {
		err = errNoSnapshot
	}
	if err != nil {
		// An empty snapshot, not ClearSnapshot: clearing would also drop the node's open
		// watches, and it would never get its resources once its Gateway exists.
		if empty, eerr := snapshot(&waypointxds.WaypointResources{}); eerr == nil {
			_ = s.snapshots.SetSnapshot(context.Background(), node, empty)
		}
		s.log.Warn("unknown waypoint node: no resources sent", "node", node, "error", err.Error())
		return
	}
	if err := s.snapshots.SetSnapshot(context.Background(), node, s.wp.snaps[key]); err != nil {
		s.log.Error("set waypoint snapshot", "node", node, "waypoint", key, "error", err.Error())
	}
}

type errString string

func (e errString) Error() string { return string(e) }

const errNoSnapshot = errString("the waypoint's resources could not be built")

// envoyStream records that stream id of node asks for an Envoy type; the first time, the node
// is given its waypoint's snapshot (before go-control-plane opens the watch).
func (s *Server) envoyStream(id streamKey, node *core.Node, typeURL string) {
	if slices.Contains(Types, typeURL) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.wp.streams[id]; ok || node.GetId() == "" {
		return
	}
	s.wp.streams[id] = node.GetId()
	s.wp.nodes[node.GetId()]++
	if s.wp.nodes[node.GetId()] == 1 {
		s.log.Info("waypoint connected", "stream", id.id, "delta", id.delta, "node", node.GetId())
		s.assign(node.GetId())
	}
}

// envoyStreamClosed forgets stream id; the node's snapshot goes with its last stream.
func (s *Server) envoyStreamClosed(id streamKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	node, ok := s.wp.streams[id]
	if !ok {
		return false
	}
	delete(s.wp.streams, id)
	if s.wp.nodes[node]--; s.wp.nodes[node] <= 0 {
		delete(s.wp.nodes, node)
		s.snapshots.ClearSnapshot(node)
		s.log.Info("waypoint disconnected", "stream", id.id, "delta", id.delta, "node", node)
	}
	return true
}

// snapshot packs one waypoint's resources; each type's version is a hash of its resources'
// versions, so it changes exactly when one of them does.
func snapshot(w *waypointxds.WaypointResources) (*cache.Snapshot, error) {
	snap := &cache.Snapshot{}
	byType := w.ByType()
	for _, t := range waypointxds.Types {
		var items []types.Resource
		for _, m := range byType[t] {
			items = append(items, m)
		}
		snap.Resources[cache.GetResponseType(t)] = cache.NewResources("", items)
	}
	if err := snap.ConstructVersionMap(); err != nil {
		return nil, err
	}
	for _, t := range waypointxds.Types {
		vm := snap.GetVersionMap(t)
		names := make([]string, 0, len(vm))
		for n := range vm {
			names = append(names, n)
		}
		slices.Sort(names)
		h := sha256.New()
		for _, n := range names {
			h.Write([]byte(n + "\x00" + vm[n] + "\x00"))
		}
		i := cache.GetResponseType(t)
		snap.Resources[i].Version = hex.EncodeToString(h.Sum(nil))[:16]
	}
	return snap, nil
}

// WaypointOfNode returns the namespace/name of the waypoint whose resources an Envoy node id
// receives, or "" when it receives none (not connected, or an unknown node).
func (s *Server) WaypointOfNode(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.wp.res == nil || s.wp.nodes[id] == 0 {
		return ""
	}
	if _, err := s.snapshots.GetSnapshot(id); err != nil {
		return ""
	}
	key, _ := s.wp.res.WaypointForNode(id)
	return key
}
