// Package xdsclient is the embedded waypoint's delta ADS client: one stream with the waypoint's Envoy node id, wildcard subscriptions to the types it asks for, each response applied whole (ACK) or rejected (NACK, the last good resources kept), and reconnection with backoff.
package xdsclient

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs the waypoint subscribes to.
const (
	AddressType   = "type.googleapis.com/istio.workload.Address"
	RouteType     = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	ExtensionType = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
	ListenerType  = "type.googleapis.com/envoy.config.listener.v3.Listener"
)

// Types are the subscriptions of a waypoint, in order.
var Types = []string{AddressType, ExtensionType, RouteType}

// Applier takes the full set of resources of one type (name → resource) after a response; an
// error rejects the response (NACK) and the previous set stays in force.
type Applier func(typeURL string, resources map[string]*anypb.Any) error

// Options configure a Client.
type Options struct {
	Address     string // host:port of the control plane (plaintext gRPC)
	NodeID      string // waypoint~<ip>~<pod>.<ns>~<ns>.svc.cluster.local
	Types       []string
	Apply       Applier
	Logger      *slog.Logger
	DialOptions []grpc.DialOption // nil: plaintext
	MinBackoff  time.Duration     // 100ms when zero
	MaxBackoff  time.Duration     // 15s when zero
}

// Client is a delta ADS client.
type Client struct {
	o   Options
	log *slog.Logger

	mu        sync.Mutex
	resources map[string]map[string]*discovery.Resource // accepted, by type and name

	acks, nacks, connects atomic.Int64
}

// New returns a Client; Run starts it.
func New(o Options) (*Client, error) {
	if o.Address == "" || o.NodeID == "" || o.Apply == nil {
		return nil, errors.New("xdsclient: Address, NodeID and Apply are required")
	}
	if len(o.Types) == 0 {
		o.Types = Types
	}
	o.MinBackoff = cmp.Or(o.MinBackoff, 100*time.Millisecond)
	o.MaxBackoff = max(cmp.Or(o.MaxBackoff, 15*time.Second), o.MinBackoff)
	if o.DialOptions == nil {
		o.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{o: o, log: log, resources: map[string]map[string]*discovery.Resource{}}
	for _, t := range o.Types {
		c.resources[t] = map[string]*discovery.Resource{}
	}
	return c, nil
}

// ACKs, NACKs and Connects are counters.
func (c *Client) ACKs() int64     { return c.acks.Load() }
func (c *Client) NACKs() int64    { return c.nacks.Load() }
func (c *Client) Connects() int64 { return c.connects.Load() }

// Run keeps a stream open until ctx ends; it returns nil then.
func (c *Client) Run(ctx context.Context) error {
	conn, err := grpc.NewClient(c.o.Address, c.o.DialOptions...)
	if err != nil {
		return fmt.Errorf("xdsclient: %w", err)
	}
	defer conn.Close()
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	delay := c.o.MinBackoff
	for {
		got, err := c.stream(ctx, ads)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			delay = c.o.MinBackoff
		}
		wait := delay/2 + rand.N(delay/2+1)
		c.log.Warn("xds stream ended; reconnecting", "address", c.o.Address, "error", fmt.Sprint(err), "in", wait.String())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(delay*2, c.o.MaxBackoff)
	}
}

func (c *Client) versions(t string) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{}
	for n, r := range c.resources[t] {
		out[n] = r.GetVersion()
	}
	return out
}

func (c *Client) stream(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	c.connects.Add(1)
	for _, t := range c.o.Types {
		// The node on every subscription (xDS allows it; Envoy does so without
		// set_node_on_first_message_only): a server may look at it per type.
		req := &discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: c.o.NodeID}, TypeUrl: t, ResourceNamesSubscribe: []string{"*"}, InitialResourceVersions: c.versions(t)}
		if err := s.Send(req); err != nil {
			return false, err
		}
	}
	c.log.Info("xds stream opened", "address", c.o.Address, "node", c.o.NodeID)
	for {
		resp, err := s.Recv()
		if err != nil {
			return got, err
		}
		got = true
		ack := &discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		if err := c.apply(resp); err != nil {
			c.nacks.Add(1)
			c.log.Warn("rejecting xds response (NACK)", "type", resp.GetTypeUrl(), "nonce", resp.GetNonce(), "error", err.Error())
			ack.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		} else {
			c.acks.Add(1)
		}
		if err := s.Send(ack); err != nil {
			return got, err
		}
	}
}

func (c *Client) apply(resp *discovery.DeltaDiscoveryResponse) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := resp.GetTypeUrl()
	cur, ok := c.resources[t]
	if !ok {
		return fmt.Errorf("unexpected type %q", t)
	}
	next := maps.Clone(cur)
	for _, n := range resp.GetRemovedResources() {
		delete(next, n)
	}
	for _, r := range resp.GetResources() {
		if r.GetName() == "" || r.GetResource() == nil {
			return errors.New("resource without a name or a body")
		}
		if r.GetResource().GetTypeUrl() != t {
			return fmt.Errorf("%s: resource of type %q in a %q response", r.GetName(), r.GetResource().GetTypeUrl(), t)
		}
		next[r.GetName()] = r
	}
	all := make(map[string]*anypb.Any, len(next))
	for n, r := range next {
		all[n] = r.GetResource()
	}
	if err := c.o.Apply(t, all); err != nil {
		return err
	}
	c.resources[t] = next
	c.log.Debug("xds update applied", "type", t, "updated", len(resp.GetResources()), "removed", len(resp.GetRemovedResources()), "total", len(next))
	return nil
}
