package proxy

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/goambient/goambient/xdsserver/ca/pki"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/ztunnel/accesslog"
	"github.com/goambient/goambient/ztunnel/identity"
	"github.com/goambient/goambient/ztunnel/state"
)

// testProxy is one loopback proxy on node n1, with the CA its identities come from and its log.
type testProxy struct {
	ca    *pki.CA
	store *state.Store
	logs  *logBuf
	p     *Proxy
}

// randomNet is a fresh 127.a.b prefix per test, so concurrent runs do not share addresses.
func randomNet() string {
	return fmt.Sprintf("127.%d.%d", 10+rand.IntN(90), 1+rand.IntN(250))
}

// startEcho serves an echo app on the private address of pod:port, until the test ends.
func startEcho(t *testing.T, pod string, port int) {
	t.Helper()
	app := AppOffsetRule(DefaultAppOffset)(netip.AddrPortFrom(netip.MustParseAddr(pod), uint16(port)))
	ln, err := net.Listen("tcp", app.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); bufio.NewReader(c).WriteTo(c) }()
		}
	}()
}

// parseState reads a state document, failing the test on error.
func parseState(t *testing.T, doc string) *state.State {
	t.Helper()
	st, err := state.Parse([]byte(doc), "test")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// startProxy starts a loopback proxy on node n1 serving st; edit, when set, adjusts the Config
// (whose Store is already set) before the proxy is built. Everything stops when the test ends.
func startProxy(t *testing.T, st *state.State, edit func(*Config)) *testProxy {
	t.Helper()
	ca, err := pki.NewCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	idm, err := identity.NewManager(ctx, identity.ManagerOptions{Source: pki.NewSource(ca, time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idm.Close() })
	tp := &testProxy{ca: ca, store: state.NewStore(st), logs: &logBuf{}}
	cfg := Config{
		Logger: slog.New(accesslog.NewHandler(tp.logs, nil)), Node: "n1", Store: tp.store, Identity: idm,
		Loopback: true, DrainGrace: time.Second,
	}
	if edit != nil {
		edit(&cfg)
	}
	if tp.p, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	if err := tp.p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.p.Shutdown(context.Background()) })
	return tp
}
