package zds

import (
	"context"
	"log/slog"
	"time"

	"github.com/goambient/goambient/ztunnel/proxy"
)

// DefaultSocket is where istio-cni's node agent listens for ztunnels (its --ztunnel-uds-address).
const DefaultSocket = "/var/run/ztunnel/ztunnel.sock"

// Handler is the proxy side of ZDS (proxy.PodSet implements it). Each call returns when the
// change is done; its error goes back to the node agent in the request's ack.
type Handler interface {
	// AddPod serves the pod uid (Kubernetes namespace and name) in its network namespace ns,
	// which it owns from then on, whatever it returns.
	AddPod(ctx context.Context, uid, namespace, name string, ns proxy.Netns) error
	// DelPod stops serving the pod uid; an unknown uid is no error.
	DelPod(ctx context.Context, uid string) error
	// RetainPods drops every pod whose uid is not in keep: the node agent's snapshot is over.
	RetainPods(ctx context.Context, keep map[string]bool) error
}

// Config configures Run. Handler is required.
type Config struct {
	Socket  string       // the node agent's socket; "" is DefaultSocket
	Handler Handler      // the proxy side
	Logger  *slog.Logger // nil: none
	// OpenNetns turns a received fd into a namespace, owning fd (closing it on error); nil is
	// netns.FromFD. Tests pass any fd with a fake.
	OpenNetns func(fd int, uid string) (proxy.Netns, error)
	// MinBackoff and MaxBackoff bound the wait before a reconnect, doubled after each failed
	// attempt (defaults 100ms and 5s).
	MinBackoff, MaxBackoff time.Duration
}

var _ Handler = (*proxy.PodSet)(nil)
