package main

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/goambient/goambient/ztunnel/xds"
)

// liveSource is a running xdsserver to ask: its ADS address, and for its TLS listener (15012)
// the root that verifies it and a bearer token file (the waypoints' SDS secrets are served
// there only, to the waypoint's own token).
type liveSource struct {
	address, root, tokenFile string
	timeout                  time.Duration
}

// fetch subscribes to types as node (a ztunnel's node name is turned into a ztunnel node id)
// over delta ADS and returns what the server sent once every type was answered. A node the
// server does not know gets no answer: the error says so after the timeout.
func (l liveSource) fetch(node string, types []string) (map[string]map[string]proto.Message, error) {
	var mu sync.Mutex
	got := map[string]map[string]*anypb.Any{}
	o := xds.Options{Address: l.address, Types: types, NodeOnEveryRequest: true, TokenFile: l.tokenFile,
		Apply: func(typeURL string, r map[string]*anypb.Any) error {
			mu.Lock()
			defer mu.Unlock()
			got[typeURL] = maps.Clone(r)
			return nil
		}}
	switch {
	case strings.Contains(node, "~"):
		o.NodeID = node
	default:
		o.Node = xds.Node{IP: "127.0.0.1", PodName: "meshctl", Namespace: "istio-system", NodeName: node}
	}
	if l.root != "" {
		creds, err := xds.TLSCredentials(l.root, "")
		if err != nil {
			return nil, err
		}
		o.Credentials = creds
	}
	c, err := xds.New(o)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case <-c.Synced():
	case <-ctx.Done():
		mu.Lock()
		answered := len(got)
		mu.Unlock()
		return nil, fmt.Errorf("%s did not answer every type within %v (%d of %d answered; a node it does not know, or whose token it refuses, gets no answer): %v",
			l.address, l.timeout, answered, len(types), c.Stats())
	}
	mu.Lock()
	defer mu.Unlock()
	out := map[string]map[string]proto.Message{}
	for typ, set := range got {
		out[typ] = map[string]proto.Message{}
		for name, a := range set {
			m, err := a.UnmarshalNew()
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", typ, name, err)
			}
			out[typ][name] = m
		}
	}
	return out, nil
}
