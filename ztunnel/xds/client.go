// Package xds is a delta ADS client: it subscribes to type URLs, hands each type's full set of accepted resources to an Applier (by default ztunnel's, which turns Istio's workload API into States in a state.Store), ACKs or NACKs, and reconnects with backoff, resuming with the versions it holds.
package xds

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/goambient/goambient/ztunnel/state"
)

// Type URLs of the workload API.
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// Types are the type URLs ztunnel subscribes to (the default with a Store), in the order it subscribes.
var Types = []string{AddressType, AuthorizationType}

// Defaults of Options.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 15 * time.Second
	// DefaultServerName is the name TLSCredentials verifies when given none: the one the
	// control plane's serving certificate carries (Istio's istiod.istio-system.svc).
	DefaultServerName = "istiod.istio-system.svc"
	// DefaultClusterID is Istio's default cluster id (CLUSTER_ID).
	DefaultClusterID = "Kubernetes"
	// ClusterIDKey is the stream metadata that names the caller's cluster, sent with the
	// token as Istio's ztunnel does: istiod authenticates a token with the API server of the
	// cluster it names (its own when the metadata is absent or names it).
	ClusterIDKey = "clusterid"
)

// Node says who the ztunnel is, as Istio's ztunnel tells istiod.
type Node struct {
	IP        string // the ztunnel pod's IP (INSTANCE_IPS)
	PodName   string // the ztunnel pod (NAME)
	Namespace string // its namespace (NAMESPACE)
	NodeName  string // the node it serves (NODE_NAME)
	ClusterID string // the cluster it runs in (CLUSTER_ID); DefaultClusterID when ""
}

// ID is the node id ztunnel sends: "ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local".
func (n Node) ID() string {
	return fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", n.IP, n.PodName, n.Namespace, n.Namespace)
}

func (n Node) proto() *core.Node {
	md, _ := structpb.NewStruct(map[string]any{
		"NAME": n.PodName, "NAMESPACE": n.Namespace, "INSTANCE_IPS": n.IP, "NODE_NAME": n.NodeName,
		"CLUSTER_ID": cmp.Or(n.ClusterID, DefaultClusterID),
	})
	return &core.Node{Id: n.ID(), Metadata: md}
}

// MaxRecvMsgSize is the largest xDS response the client accepts (gRPC's default is 4 MiB).
const MaxRecvMsgSize = 64 << 20

// Applier takes the full set of accepted resources of one type (name → resource) after a
// response; an error rejects the response (NACK) and the previous set stays in force. It is
// called from one goroutine at a time.
type Applier func(typeURL string, resources map[string]*anypb.Any) error

// Options configure a Client. Exactly one of Store and Apply is set.
type Options struct {
	Address string // the control plane, host:port
	// Node is who we are: its ID and metadata are sent, unless NodeID is set.
	Node Node
	// NodeID, when set, is sent as the node (without metadata) instead of Node.
	NodeID string
	// NodeOnEveryRequest sends the node on every subscription request, not only the first
	// (xDS allows it; Envoy does so without set_node_on_first_message_only): for a server
	// that looks at it per type.
	NodeOnEveryRequest bool
	// Types are the type URLs to subscribe to (wildcard), in order; Types when zero with a
	// Store, required with Apply.
	Types []string
	// Apply takes each type's resources.
	Apply Applier
	// Store, instead of Apply, receives a State built from the workload API's types.
	Store        *state.Store
	StateOptions []state.Option // how States are built (with Store)
	Logger       *slog.Logger   // nil: no logs
	// Credentials, when set, secure the connection (the control plane's TLS listener, Istio's
	// 15012: see TLSCredentials); nil is plaintext unless DialOptions say otherwise.
	Credentials credentials.TransportCredentials
	// TokenFile, when set, holds a bearer token sent as the metadata "authorization: Bearer
	// <token>" on every stream, with "clusterid: <Node.ClusterID>" (DefaultClusterID when
	// empty); it is read again for each stream, so a rotated token is used from the next
	// reconnection. It requires Credentials (a token never goes in clear).
	TokenFile   string
	DialOptions []grpc.DialOption // added after Credentials; nil and no Credentials: plaintext
	MinBackoff  time.Duration     // first delay before reconnecting; DefaultMinBackoff when zero
	MaxBackoff  time.Duration     // longest delay; DefaultMaxBackoff when zero
}

// Stats are the client's counters.
type Stats struct {
	Connects  int64 // streams opened
	Responses int64 // responses received
	ACKs      int64
	NACKs     int64
	States    int64 // sets applied (with a Store: States stored)
}

// Client is a delta ADS client. It holds the resources it accepted (by type URL and name,
// with their versions) across reconnections: when the control plane is away the applier keeps
// the last good set, and a new stream resumes with initial_resource_versions so only what
// changed meanwhile is sent.
type Client struct {
	opts Options
	node *core.Node
	log  *slog.Logger

	mu        sync.Mutex
	resources map[string]map[string]*discovery.Resource // type URL → name → accepted resource
	synced    map[string]bool
	syncedCh  chan struct{}
	lastErr   error

	connects, responses, acks, nacks, states atomic.Int64
}

// New returns a Client; Run starts it.
func New(opts Options) (*Client, error) {
	if opts.Address == "" {
		return nil, errors.New("xds client: no address")
	}
	switch {
	case opts.Store != nil && opts.Apply != nil:
		return nil, errors.New("xds client: both a store and an applier")
	case opts.Store != nil:
		if len(opts.Types) == 0 {
			opts.Types = Types
		}
		for _, t := range opts.Types {
			if !slices.Contains(Types, t) {
				return nil, fmt.Errorf("xds client: a store takes no %q", t)
			}
		}
		opts.Apply = newStoreApplier(opts.Store, opts.StateOptions).apply
	case opts.Apply != nil:
		if len(opts.Types) == 0 {
			return nil, errors.New("xds client: no types")
		}
	default:
		return nil, errors.New("xds client: no store")
	}
	if opts.TokenFile != "" && opts.Credentials == nil {
		return nil, errors.New("xds client: a token file needs transport credentials (TLS)")
	}
	opts.Types = slices.Clone(opts.Types)
	opts.MinBackoff = cmp.Or(opts.MinBackoff, DefaultMinBackoff)
	opts.MaxBackoff = max(cmp.Or(opts.MaxBackoff, DefaultMaxBackoff), opts.MinBackoff)
	switch {
	case opts.Credentials != nil:
		opts.DialOptions = append([]grpc.DialOption{grpc.WithTransportCredentials(opts.Credentials)}, opts.DialOptions...)
	case opts.DialOptions == nil:
		opts.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	// gRPC's own reconnection backoff (1 s to 120 s by default) follows ours. gRPC refuses
	// messages over 4 MiB by default; a large mesh's initial sync is more (10,000 pods: 4.4 MB),
	// and refusing it would reconnect forever. Options given by the caller come after, so they win.
	opts.DialOptions = append([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: opts.MinBackoff, Multiplier: 2, Jitter: 0.2, MaxDelay: opts.MaxBackoff},
		MinConnectTimeout: 5 * time.Second,
	}), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxRecvMsgSize))}, opts.DialOptions...)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	node := opts.Node.proto()
	if opts.NodeID != "" {
		node = &core.Node{Id: opts.NodeID}
	}
	c := &Client{opts: opts, node: node, log: log, resources: map[string]map[string]*discovery.Resource{}, synced: map[string]bool{}, syncedCh: make(chan struct{})}
	for _, t := range opts.Types {
		c.resources[t] = map[string]*discovery.Resource{}
	}
	return c, nil
}

// TLSCredentials are transport credentials verifying the control plane's serving certificate
// with the PEM roots of rootFile (read once) for serverName (DefaultServerName when "").
func TLSCredentials(rootFile, serverName string) (credentials.TransportCredentials, error) {
	data, err := os.ReadFile(rootFile)
	if err != nil {
		return nil, fmt.Errorf("xds client: root file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("xds client: root file %s: no PEM certificate", rootFile)
	}
	return credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: cmp.Or(serverName, DefaultServerName), MinVersion: tls.VersionTLS12}), nil
}

// Synced is closed once a first response of every type was accepted.
func (c *Client) Synced() <-chan struct{} { return c.syncedCh }

// Stats returns the counters.
func (c *Client) Stats() Stats {
	return Stats{Connects: c.connects.Load(), Responses: c.responses.Load(), ACKs: c.acks.Load(), NACKs: c.nacks.Load(), States: c.states.Load()}
}

// LastError is why the last response was rejected (nil after an accepted one).
func (c *Client) LastError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

// Versions returns the versions of the accepted resources of a type, by name.
func (c *Client) Versions(typeURL string) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]string, len(c.resources[typeURL]))
	for n, r := range c.resources[typeURL] {
		out[n] = r.GetVersion()
	}
	return out
}

// Run connects and keeps connected until ctx is done; it returns nil then.
func (c *Client) Run(ctx context.Context) error {
	conn, err := grpc.NewClient(c.opts.Address, c.opts.DialOptions...)
	if err != nil {
		return fmt.Errorf("xds client: %w", err)
	}
	defer conn.Close()
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	delay := c.opts.MinBackoff
	for {
		got, err := c.stream(ctx, ads)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			delay = c.opts.MinBackoff // the stream worked: start backing off afresh
		}
		wait := delay/2 + rand.N(delay/2+1) // exponential backoff with jitter
		c.log.Warn("xds stream ended; reconnecting", "address", c.opts.Address, "error", errString(err), "in", wait.String())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(delay*2, c.opts.MaxBackoff)
	}
}

// stream runs one ADS stream; got reports whether a response was received on it.
func (c *Client) stream(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.opts.TokenFile != "" {
		tok, err := os.ReadFile(c.opts.TokenFile)
		if err != nil {
			return false, fmt.Errorf("token: %w", err)
		}
		if t := strings.TrimSpace(string(tok)); t != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+t,
				ClusterIDKey, cmp.Or(c.opts.Node.ClusterID, DefaultClusterID))
		}
	}
	s, err := ads.DeltaAggregatedResources(ctx, grpc.WaitForReady(false))
	if err != nil {
		return false, err
	}
	c.connects.Add(1)
	for i, t := range c.opts.Types {
		req := &discovery.DeltaDiscoveryRequest{
			TypeUrl:                 t,
			ResourceNamesSubscribe:  []string{"*"},
			InitialResourceVersions: c.Versions(t),
		}
		if i == 0 || c.opts.NodeOnEveryRequest {
			req.Node = c.node
		}
		if err := s.Send(req); err != nil {
			return false, err
		}
	}
	c.log.Info("xds stream opened", "address", c.opts.Address, "node", c.node.GetId(), "tls", c.opts.Credentials != nil)
	for {
		resp, err := s.Recv()
		if err != nil {
			return got, err
		}
		got = true
		c.responses.Add(1)
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

// apply merges the response into the accepted set of its type and hands that to the applier;
// on any error nothing changes.
func (c *Client) apply(resp *discovery.DeltaDiscoveryResponse) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.merge(resp); err != nil {
		c.lastErr = err
		return err
	}
	c.lastErr = nil
	return nil
}

// merge does apply's work; c.mu is held.
func (c *Client) merge(resp *discovery.DeltaDiscoveryResponse) error {
	t := resp.GetTypeUrl()
	cur, ok := c.resources[t]
	if !ok {
		return fmt.Errorf("unexpected type %q", t)
	}
	next := maps.Clone(cur)
	for _, name := range resp.GetRemovedResources() {
		delete(next, name)
	}
	var errs []error
	for _, r := range resp.GetResources() {
		if err := check(t, r); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.GetName(), err))
			continue
		}
		next[r.GetName()] = r
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	set := make(map[string]*anypb.Any, len(next))
	for n, r := range next {
		set[n] = r.GetResource()
	}
	if err := c.opts.Apply(t, set); err != nil {
		return err
	}
	c.resources[t] = next
	c.states.Add(1)
	if !c.synced[t] {
		c.synced[t] = true
		if len(c.synced) == len(c.resources) {
			close(c.syncedCh)
		}
	}
	c.log.Debug("xds update applied", "type", t, "updated", len(resp.GetResources()), "removed", len(resp.GetRemovedResources()), "total", len(next))
	return nil
}

// check validates a resource's envelope: a name, and a body of the response's type.
func check(typeURL string, r *discovery.Resource) error {
	if r.GetName() == "" {
		return errors.New("resource without a name")
	}
	a := r.GetResource()
	if a == nil {
		return errors.New("no resource body")
	}
	if a.GetTypeUrl() != typeURL {
		return fmt.Errorf("resource of type %q in a %q response", a.GetTypeUrl(), typeURL)
	}
	return nil
}

// storeApplier is ztunnel's Applier: it decodes the workload API's resources (each once) and
// stores the State they build together.
type storeApplier struct {
	store   *state.Store
	opts    []state.Option
	decoded map[string]map[string]decodedEntry // type URL → name → accepted resource
}

type decodedEntry struct {
	raw *anypb.Any
	msg proto.Message // *workloadapi.Address or *security.Authorization
}

func newStoreApplier(store *state.Store, opts []state.Option) *storeApplier {
	return &storeApplier{store: store, opts: opts, decoded: map[string]map[string]decodedEntry{}}
}

func (s *storeApplier) apply(t string, set map[string]*anypb.Any) error {
	cur := s.decoded[t]
	next := make(map[string]decodedEntry, len(set))
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(set)) {
		a := set[name]
		if e, ok := cur[name]; ok && e.raw == a { // unchanged since accepted
			next[name] = e
			continue
		}
		msg, err := decode(t, a)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		next[name] = decodedEntry{raw: a, msg: msg}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	all := maps.Clone(s.decoded)
	all[t] = next
	res, names := resources(all)
	st, err := state.New(res, s.opts...)
	if err != nil {
		return nameResources(err, names)
	}
	s.decoded = all
	s.store.Store(st)
	return nil
}

// decode unpacks one resource into the type its type URL says.
func decode(typeURL string, a *anypb.Any) (proto.Message, error) {
	var m proto.Message
	switch typeURL {
	case AddressType:
		m = &workloadapi.Address{}
	case AuthorizationType:
		m = &security.Authorization{}
	default:
		return nil, fmt.Errorf("unexpected type %q", typeURL)
	}
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return nil, fmt.Errorf("cannot decode: %w", err)
	}
	if ad, ok := m.(*workloadapi.Address); ok && ad.GetType() == nil {
		return nil, errors.New("address is neither a workload nor a service")
	}
	return m, nil
}

// resources converts the accepted set into state.Resources, ordered by name; names holds the
// resource name of each entry, by list ("workloads", "services", "authorizations").
func resources(all map[string]map[string]decodedEntry) (r state.Resources, names map[string][]string) {
	names = map[string][]string{}
	for _, name := range slices.Sorted(maps.Keys(all[AddressType])) {
		switch t := all[AddressType][name].msg.(*workloadapi.Address).GetType().(type) {
		case *workloadapi.Address_Workload:
			r.Workloads = append(r.Workloads, t.Workload)
			names["workloads"] = append(names["workloads"], name)
		case *workloadapi.Address_Service:
			r.Services = append(r.Services, t.Service)
			names["services"] = append(names["services"], name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(all[AuthorizationType])) {
		r.Authorizations = append(r.Authorizations, all[AuthorizationType][name].msg.(*security.Authorization))
		names["authorizations"] = append(names["authorizations"], name)
	}
	return r, names
}

// nameResources puts the resource name in front of each of state.New's errors: their paths
// ("workloads[3].addresses[0]") index lists the control plane never sees.
func nameResources(err error, names map[string][]string) error {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	out := make([]error, 0, len(errs))
	for _, e := range errs {
		var fe *state.FieldError
		if errors.As(e, &fe) {
			list, rest, _ := strings.Cut(fe.Path, "[")
			idx, _, _ := strings.Cut(rest, "]")
			if i, err := strconv.Atoi(idx); err == nil && i >= 0 && i < len(names[list]) {
				e = fmt.Errorf("%s: %w", names[list][i], e)
			}
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
