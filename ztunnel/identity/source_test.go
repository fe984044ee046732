package identity

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goambient/goambient/xdsserver/ca/pki"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestWorkloadID(t *testing.T) {
	id, err := WorkloadID(td, "handson", "curl-deny")
	if err != nil || id.String() != "spiffe://cluster.local/ns/handson/sa/curl-deny" {
		t.Fatalf("WorkloadID = %v, %v", id, err)
	}
	ns, sa, err := ParseWorkloadID(id)
	if err != nil || ns != "handson" || sa != "curl-deny" {
		t.Errorf("ParseWorkloadID = %q %q %v", ns, sa, err)
	}
	for _, bad := range [][2]string{{"", "sa"}, {"ns", ""}, {"a/b", "c"}, {"..", "c"}, {"Ns!", "c"}} {
		if _, err := WorkloadID(td, bad[0], bad[1]); err == nil {
			t.Errorf("WorkloadID(%q, %q) succeeded", bad[0], bad[1])
		}
	}
	for _, s := range []string{"spiffe://cluster.local", "spiffe://cluster.local/ns/a", "spiffe://cluster.local/ns/a/sa/b/c", "spiffe://cluster.local/x/a/sa/b"} {
		if _, _, err := ParseWorkloadID(spiffeid.RequireFromString(s)); err == nil || !strings.Contains(err.Error(), "not a workload identity") {
			t.Errorf("ParseWorkloadID(%s): %v", s, err)
		}
	}
}

// writeDir is what `meshctl certs root` and `meshctl certs issue` leave in dir.
func writeDir(t *testing.T, ca *pki.CA, dir string, ids ...spiffeid.ID) map[spiffeid.ID]*x509svid.SVID {
	t.Helper()
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	out := map[spiffeid.ID]*x509svid.SVID{}
	for _, id := range ids {
		svid, err := ca.IssueSVID(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := WriteSVID(dir, svid); err != nil {
			t.Fatal(err)
		}
		out[id] = svid
	}
	return out
}

func TestDirSource(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ca := newTestCA(t, newFakeClock(t0))
	idB := spiffeid.RequireFromString("spiffe://cluster.local/ns/foo/sa/baz")
	svids := writeDir(t, ca, dir, idFoo, idB)

	for name, perm := range map[string]os.FileMode{"foo/bar/cert-chain.pem": 0o644, "foo/bar/key.pem": 0o600} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Mode().Perm() != perm {
			t.Errorf("%s: %v, mode %v; want %v", name, err, st.Mode().Perm(), perm)
		}
	}

	src := NewDirSource(dir, td)
	got, err := src.FetchSVID(ctx, idFoo)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != idFoo || !got.Certificates[0].Equal(svids[idFoo].Certificates[0]) {
		t.Errorf("read %s serial %s, wrote serial %s", got.ID, got.Certificates[0].SerialNumber, svids[idFoo].Certificates[0].SerialNumber)
	}
	bundle, err := src.FetchBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bundle.Equal(ca.Bundle()) {
		t.Error("the bundle read is not the CA's")
	}

	// A rewritten file is what the next fetch returns.
	newer, _ := ca.IssueSVID(idFoo, time.Hour)
	if _, err := WriteSVID(dir, newer); err != nil {
		t.Fatal(err)
	}
	if got, _ := src.FetchSVID(ctx, idFoo); !got.Certificates[0].Equal(newer.Certificates[0]) {
		t.Error("the rewritten SVID was not read")
	}

	// Errors name the identity and the files.
	missing := spiffeid.RequireFromString("spiffe://cluster.local/ns/foo/sa/nobody")
	_, err = src.FetchSVID(ctx, missing)
	for _, want := range []string{missing.String(), filepath.Join(dir, "foo", "nobody", "cert-chain.pem"), filepath.Join(dir, "foo", "nobody", "key.pem")} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing identity: %v; want it to name %s", err, want)
		}
	}
	if _, err := src.FetchSVID(ctx, spiffeid.RequireFromString("spiffe://example.org/ns/foo/sa/bar")); err == nil || !strings.Contains(err.Error(), "not in trust domain") {
		t.Errorf("foreign trust domain: %v", err)
	}

	// The files of one identity under another's folder.
	for _, f := range []string{CertChainFile, KeyFile} {
		data, _ := os.ReadFile(filepath.Join(dir, "foo", "baz", f))
		os.WriteFile(filepath.Join(dir, "foo", "bar", f), data, 0o600)
	}
	if _, err := src.FetchSVID(ctx, idFoo); err == nil || !strings.Contains(err.Error(), "holds an SVID for "+idB.String()) {
		t.Errorf("SVID of another identity: %v", err)
	}
	// A key that does not match the chain.
	keyB, _ := os.ReadFile(filepath.Join(dir, "foo", "baz", KeyFile))
	if _, err := WriteSVID(dir, newer); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "foo", "bar", KeyFile), keyB, 0o600)
	if _, err := src.FetchSVID(ctx, idFoo); err == nil || !strings.Contains(err.Error(), idFoo.String()) {
		t.Errorf("mismatched key: %v", err)
	}

	os.Remove(filepath.Join(dir, RootCertFile))
	if _, err := src.FetchBundle(ctx); err == nil || !strings.Contains(err.Error(), RootCertFile) {
		t.Errorf("missing bundle: %v", err)
	}
}

func TestCASource(t *testing.T) {
	ca := newTestCA(t, newFakeClock(t0))
	src := pki.NewSource(ca, 3*time.Hour)
	a, err := src.FetchSVID(context.Background(), idFoo)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := src.FetchSVID(context.Background(), idFoo)
	if a.Certificates[0].SerialNumber.Cmp(b.Certificates[0].SerialNumber) == 0 {
		t.Error("two fetches returned the same SVID; a CA source issues a new one each time")
	}
	if life := a.Certificates[0].NotAfter.Sub(a.Certificates[0].NotBefore); life != 3*time.Hour {
		t.Errorf("lifetime %v", life)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := src.FetchSVID(ctx, idFoo); err == nil {
		t.Error("FetchSVID with a cancelled context succeeded")
	}
}
