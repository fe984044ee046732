package app

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/state"
)

// dialProvider reaches an ext_authz provider's host:port as the waypoint's Envoy does through
// its outbound cluster: a mesh Service (by hostname) at one of its endpoints — over HBONE to
// the pod's ztunnel with the waypoint's identity when the pod is in the mesh, in plain TCP
// otherwise — and any other host directly.
func (a *App) dialProvider(ctx context.Context, address string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("provider %s: port: %w", address, err)
	}
	st := a.Store.Load().State
	var sv *workloadapi.Service
	if parts := strings.Split(host, "."); len(parts) >= 3 {
		sv = st.Service(parts[1] + "/" + host)
	}
	if sv == nil {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", address)
	}
	for _, w := range st.Endpoints(sv) {
		tp, ok := st.TargetPort(sv, w, uint16(port))
		addrs := st.Addresses(w)
		if !ok || len(addrs) == 0 {
			continue
		}
		dst := netip.AddrPortFrom(addrs[0], tp)
		if w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		}
		svid, err := a.SVID()
		if err != nil {
			return nil, fmt.Errorf("the waypoint's SVID: %w", err)
		}
		id, err := spiffeid.FromString("spiffe://" + strings.TrimPrefix(st.Identity(w), "spiffe://"))
		if err != nil {
			return nil, fmt.Errorf("provider %s: endpoint identity: %w", address, err)
		}
		return a.client.Dial(ctx, hbone.Target{Source: svid, Address: netip.AddrPortFrom(addrs[0], state.HBONEPort),
			Identities: []spiffeid.ID{id}, Authority: dst.String()})
	}
	return nil, fmt.Errorf("provider %s: the Service has no endpoint for port %d", address, port)
}
