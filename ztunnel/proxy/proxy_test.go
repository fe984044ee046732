package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goambient/goambient/ztunnel/state"
)

func TestAppOffsetRule(t *testing.T) {
	rule := AppOffsetRule(100)
	for in, want := range map[string]string{
		"127.10.0.5:8080":  "127.110.0.5:8080",
		"127.200.1.2:9090": "127.44.1.2:9090", // mod 256
	} {
		if got := rule(netip.MustParseAddrPort(in)); got.String() != want {
			t.Errorf("AppOffsetRule(100)(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestOriginalDstWithoutRedirect: on a connection no iptables rule redirected, SO_ORIGINAL_DST
// either fails (ENOENT: no conntrack entry, when nf_conntrack is not loaded) or, with conntrack
// loaded (any host with NAT rules, a Kubernetes node), gives the connection's own destination:
// never another address. The redirected case needs root and iptables (integration/).
func TestOriginalDstWithoutRedirect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst, err := OriginalDst(c)
	if err == nil && dst != addrPortOf(c.LocalAddr()) {
		t.Errorf("OriginalDst of a direct connection = %v, want an error or its own destination %v", dst, c.LocalAddr())
	}
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestPolicyChangeClosesOpenConnection: a plaintext connection to a loopback pod is relayed to
// its app; a policy that denies it closes it, with ztunnel's log line.
func TestPolicyChangeClosesOpenConnection(t *testing.T) {
	pod := randomNet() + ".5"
	startEcho(t, pod, 7070)
	doc := func(auths string) *state.State {
		return parseState(t, fmt.Sprintf(`workloads:
- uid: Kubernetes//Pod/ns/app
  name: app
  namespace: ns
  addresses: [%q]
  node: n1
  tunnelProtocol: HBONE
  services: {ns/app.ns.svc.cluster.local: {ports: [{servicePort: 7070, targetPort: 7070}]}}
authorizations: [%s]
`, pod, auths))
	}
	tp := startProxy(t, doc(""), func(c *Config) { c.Listen = Listen{Readiness: "127.0.0.1:0"} })
	store, logs := tp.store, tp.logs
	if !tp.p.Ready() {
		t.Fatal("not ready after Start")
	}

	c, err := net.DialTimeout("tcp", pod+":7070", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	fmt.Fprintln(c, "hello")
	if line, err := r.ReadString('\n'); err != nil || line != "hello\n" {
		t.Fatalf("echo through the plaintext inbound: %q %v", line, err)
	}
	// A STRICT-like policy: deny any connection without an identity, namespace-wide.
	store.Store(doc(`{name: strict, namespace: ns, scope: NAMESPACE, action: DENY, groups: [{rules: [{matches: [{notPrincipals: [{presence: {}}]}]}]}]}`))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("the connection stayed open after the policy denied it")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "connection closed due to policy rejection") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{"connection closed because it's no longer allowed after a policy update", "explicitly denied by: ns/strict"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	// A new plaintext connection is refused at once.
	c2, err := net.DialTimeout("tcp", pod+":7070", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c2, "again")
	if line, err := bufio.NewReader(c2).ReadString('\n'); err == nil {
		t.Fatalf("denied connection answered %q", line)
	}
}
