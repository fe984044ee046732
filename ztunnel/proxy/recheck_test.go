package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goambient/goambient/xdsserver/ca/pki"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/state"
)

// raceSetup starts a loopback proxy for one pod (an echo app on 7071) whose AppAddr stores a
// namespace-wide DENY of every connection at its first call: between Authorize and tracking
// the connection as open.
func raceSetup(t *testing.T) (pod string, ca *pki.CA, logs *logBuf) {
	pod = randomNet() + ".6"
	startEcho(t, pod, 7071)
	doc := func(auths string) *state.State {
		return parseState(t, fmt.Sprintf(`workloads:
- uid: Kubernetes//Pod/ns/app
  name: app
  namespace: ns
  addresses: [%q]
  node: n1
  tunnelProtocol: HBONE
  services: {ns/app.ns.svc.cluster.local: {ports: [{servicePort: 7071, targetPort: 7071}]}}
authorizations: [%s]
`, pod, auths))
	}
	strict := doc(`{name: deny-all, namespace: ns, scope: NAMESPACE, action: DENY, groups: [{rules: [{matches: [{notPrincipals: [{presence: {}}]}, {principals: [{presence: {}}]}]}]}]}`)
	var once sync.Once
	tp := startProxy(t, doc(""), func(c *Config) {
		store, rule := c.Store, AppOffsetRule(DefaultAppOffset)
		// Called between Authorize and tracking the connection: the policy lands right then.
		c.AppAddr = func(pod netip.AddrPort) netip.AddrPort {
			once.Do(func() { store.Store(strict) })
			return rule(pod)
		}
	})
	return pod, tp.ca, tp.logs
}

// TestPolicyChangeDuringAcceptCloses: a policy that lands after a plaintext connection was
// authorized but before the proxy tracks it as open (here: while it finds the app's address)
// is missed by the re-check of the open connections; the proxy must check the connection
// against the new state itself, not relay it for good.
func TestPolicyChangeDuringAcceptCloses(t *testing.T) {
	pod, _, logs := raceSetup(t)
	c, err := net.DialTimeout("tcp", pod+":7071", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, "hello")
	if line, err := bufio.NewReader(c).ReadString('\n'); err == nil {
		t.Fatalf("the connection was relayed after a policy denying it (answer %q)", line)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the connection stayed open after a policy denying it")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "connection closed due to policy rejection") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "explicitly denied by: ns/deny-all") {
		t.Errorf("log lacks the denial:\n%s", logs)
	}
}

// TestPolicyChangeDuringConnectCloses is the same race on the HBONE path: the CONNECT
// authorized against the old state is answered 401, not relayed.
func TestPolicyChangeDuringConnectCloses(t *testing.T) {
	pod, ca, logs := raceSetup(t)
	src, err := ca.IssueSVID(spiffeid.RequireFromString("spiffe://cluster.local/ns/ns/sa/client"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := hbone.NewClient(hbone.ClientConfig{Bundle: ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ip := netip.MustParseAddr(pod)
	conn, err := c.Dial(ctx, hbone.Target{
		Source: src, Address: netip.AddrPortFrom(ip, PortInboundHBONE), Authority: netip.AddrPortFrom(ip, 7071).String(),
		Identities: []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/ns/sa/default")},
	})
	var se hbone.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		if conn != nil {
			conn.Close()
		}
		t.Fatalf("CONNECT during the policy change: want hbone.StatusError{401}, got %v", err)
	}
	if !strings.Contains(logs.String(), "connection closed due to policy rejection: explicitly denied by: ns/deny-all") {
		t.Errorf("log lacks the denial:\n%s", logs)
	}
}
