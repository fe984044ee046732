package identity

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/xdsserver/ca/pki"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("cluster.local")
	t0    = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	idFoo = spiffeid.RequireFromString("spiffe://cluster.local/ns/foo/sa/bar")
)

// newTestCA is a CA of cluster.local on the fake clock (the control plane's CA package, a
// test fixture here: the data plane's code never issues certificates).
func newTestCA(t *testing.T, clk *fakeClock) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(td, pki.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}
