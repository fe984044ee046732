package ca

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/metadata"
)

// Kind is what a caller of the CA is.
type Kind int

// Kinds of callers.
const (
	// KindZtunnel is a node proxy: it asks for the identities of the workloads on its node.
	KindZtunnel Kind = iota + 1
	// KindWaypoint is a waypoint Gateway: it asks for its own service account's identity.
	KindWaypoint
	// KindWorkload is a workload: it asks for its own identity.
	KindWorkload
)

func (k Kind) String() string {
	switch k {
	case KindZtunnel:
		return "ztunnel"
	case KindWaypoint:
		return "waypoint"
	case KindWorkload:
		return "workload"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Caller is an authenticated caller of the CA.
type Caller struct {
	Kind Kind
	// Node is the node a ztunnel runs on (KindZtunnel).
	Node string
	// Namespace and Name are the Gateway of a waypoint (KindWaypoint), the service account of a
	// workload (KindWorkload), or the ztunnel's own service account when it is known
	// (KindZtunnel, from a Kubernetes token; empty for a bootstrap token).
	Namespace, Name string
}

func (c *Caller) String() string {
	switch c.Kind {
	case KindZtunnel:
		return "ztunnel of node " + c.Node
	case KindWaypoint:
		return "waypoint " + c.Namespace + "/" + c.Name
	}
	return c.Kind.String() + " " + c.Namespace + "/" + c.Name
}

// Authenticator turns a bearer token into a caller. An error means the token is not accepted;
// it is never shown to the caller.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (*Caller, error)
}

// errNoToken is returned by BearerToken when the request carries none.
var errNoToken = errors.New("no authorization: Bearer token in the request metadata")

// BearerToken returns the token of the gRPC metadata "authorization: Bearer <token>", as
// Istio's ztunnel and istio-agent send it.
func BearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		scheme, tok, ok := strings.Cut(strings.TrimSpace(v), " ")
		if ok && strings.EqualFold(scheme, "Bearer") && strings.TrimSpace(tok) != "" {
			return strings.TrimSpace(tok), nil
		}
	}
	return "", errNoToken
}
