package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/ztunnel/hbone"
)

// TestForwardedSourceMustBelongToThePeer: the source ztunnel says where the client is
// (forwarded: for=...), and ipBlocks rules use it; a peer may only claim an address of a
// workload with its own identity, or it could borrow another workload's address.
func TestForwardedSourceMustBelongToThePeer(t *testing.T) {
	net3 := randomNet()
	pod, victim := net3+".6", net3+".7"
	startEcho(t, pod, 7071)
	tp := startProxy(t, parseState(t, fmt.Sprintf(`workloads:
- {uid: Kubernetes//Pod/ns/app, name: app, namespace: ns, serviceAccount: app, addresses: [%q], node: n1, tunnelProtocol: HBONE}
- {uid: Kubernetes//Pod/ns/victim, name: victim, namespace: ns, serviceAccount: victim, addresses: [%q], node: n2, tunnelProtocol: HBONE}
authorizations:
- {name: from-victim-ip, namespace: ns, scope: NAMESPACE, action: ALLOW, groups: [{rules: [{matches: [{sourceIps: [{address: %q, length: 32}]}]}]}]}
`, pod, victim, victim)), nil)
	ca := tp.ca
	ctx := context.Background()
	c, err := hbone.NewClient(hbone.ClientConfig{Bundle: ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	connect := func(sa string) error {
		svid, err := ca.IssueSVID(spiffeid.RequireFromString("spiffe://cluster.local/ns/ns/sa/"+sa), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		defer dcancel()
		ip := netip.MustParseAddr(pod)
		conn, err := c.Dial(dctx, hbone.Target{
			Source: svid, Address: netip.AddrPortFrom(ip, PortInboundHBONE), Authority: netip.AddrPortFrom(ip, 7071).String(),
			Identities: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/ns/sa/app")},
			SourceAddr: netip.MustParseAddrPort(victim + ":40000"), // the claim
		})
		if conn != nil {
			conn.Close()
		}
		return err
	}
	if err := connect("victim"); err != nil {
		t.Errorf("the victim's own identity claiming its own address: %v, want allowed", err)
	}
	var se hbone.StatusError
	if err := connect("attacker"); !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Errorf("another identity claiming the victim's address: %v, want 401", err)
	}
}
