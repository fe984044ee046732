package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/goambient/goambient/ztunnel/state"
)

// HostResolver resolves the DNS name of a hostname workload (a ServiceEntry endpoint with
// resolution DNS) to its addresses. ztunnel/dnsproxy's Resolver caches by the answers' TTLs.
type HostResolver interface {
	Resolve(ctx context.Context, host string) ([]netip.Addr, error)
}

// systemResolver is the default: Go's resolver (the node's resolv.conf), without a cache.
type systemResolver struct{}

func (systemResolver) Resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// resolveRoute resolves a route to a hostname endpoint: Dial gets the name's address,
// preferring the family of the address the client dialled. Other routes are returned as they are.
func (p *Proxy) resolveRoute(ctx context.Context, route state.Route, dst netip.AddrPort) (state.Route, error) {
	if route.Hostname == "" {
		return route, nil
	}
	ips, err := p.resolver.Resolve(ctx, route.Hostname)
	if err != nil {
		return route, fmt.Errorf("resolving %s: %w", route.Hostname, err)
	}
	if len(ips) == 0 {
		return route, fmt.Errorf("resolving %s: no address", route.Hostname)
	}
	ip := ips[0]
	for _, a := range ips {
		if a.Unmap().Is4() == dst.Addr().Unmap().Is4() {
			ip = a
			break
		}
	}
	route.Dial = netip.AddrPortFrom(ip.Unmap(), route.Dial.Port())
	return route, nil
}
