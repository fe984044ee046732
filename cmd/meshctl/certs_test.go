package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/goambient/goambient/ztunnel/identity"
)

// handsonMesh is the repository's copy of /work/shared/examples/handson/mesh.yaml (a policies
// test keeps the two identical).
const handsonMesh = "../../manifests/examples/handson/mesh.yaml"

// meshctl runs `meshctl args...` through the dispatcher, as the binary would.
func meshctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// readSVID reads an identity the way ztunnel does, through DirSource, and verifies it.
func readSVID(t *testing.T, dir string, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	src := identity.NewDirSource(dir, id.TrustDomain())
	svid, err := src.FetchSVID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := src.FetchBundle(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := x509svid.Verify(svid.Certificates, bundle)
	if err != nil || got != id {
		t.Fatalf("x509svid.Verify = %v, %v; want %s", got, err, id)
	}
	leaf := svid.Certificates[0]
	if leaf.IsCA || len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("leaf IsCA=%v URIs=%v", leaf.IsCA, leaf.URIs)
	}
	return svid
}

func TestCertsRootAndIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	code, out, errOut := meshctl(t, "certs", "root", "--dir", dir)
	if code != 0 || !strings.HasPrefix(out, "created root CA "+filepath.Join(dir, "root-cert.pem")+" (trust domain cluster.local") {
		t.Fatalf("certs root = %d\n%s%s", code, out, errOut)
	}
	rootPEM, _ := os.ReadFile(filepath.Join(dir, "root-cert.pem"))

	// A second run keeps the root, and refuses to serve it for another trust domain.
	code, out, _ = meshctl(t, "certs", "root", "--dir", dir)
	if again, _ := os.ReadFile(filepath.Join(dir, "root-cert.pem")); code != 0 || !strings.HasPrefix(out, "kept the existing root CA") || !bytes.Equal(again, rootPEM) {
		t.Fatalf("second certs root = %d %q; root unchanged: %v", code, out, bytes.Equal(again, rootPEM))
	}
	if code, _, errOut = meshctl(t, "certs", "root", "--dir", dir, "--trust-domain", "example.org"); code != 1 || !strings.Contains(errOut, `trust domain "cluster.local", not "example.org"`) {
		t.Errorf("certs root for another trust domain = %d %q", code, errOut)
	}

	code, out, errOut = meshctl(t, "certs", "issue", "--dir", dir, "--ns", "handson", "--sa", "curl", "--ttl", "2h")
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/handson/sa/curl")
	if code != 0 || !strings.HasPrefix(out, "issued "+id.String()+" to "+filepath.Join(dir, "handson", "curl")) {
		t.Fatalf("certs issue = %d\n%s%s", code, out, errOut)
	}
	svid := readSVID(t, dir, id)
	if life := svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore); life != 2*time.Hour {
		t.Errorf("--ttl 2h: lifetime %v", life)
	}
	st, err := os.Stat(filepath.Join(dir, "handson", "curl", "key.pem"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key.pem: %v, mode %v", err, st.Mode().Perm())
	}

	// Re-issuing replaces the files: a new serial, the default lifetime.
	if code, _, errOut = meshctl(t, "certs", "issue", "--dir", dir, "--ns", "handson", "--sa", "curl"); code != 0 {
		t.Fatal(errOut)
	}
	again := readSVID(t, dir, id)
	if again.Certificates[0].SerialNumber.Cmp(svid.Certificates[0].SerialNumber) == 0 {
		t.Error("re-issuing kept the old SVID")
	}
	if life := again.Certificates[0].NotAfter.Sub(again.Certificates[0].NotBefore); life != 24*time.Hour {
		t.Errorf("default lifetime %v", life)
	}

	// What ztunnel does with the folder: a Manager over a DirSource serves the SVID.
	m, err := identity.NewManager(context.Background(), identity.ManagerOptions{Source: identity.NewDirSource(dir, id.TrustDomain())})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got, err := m.GetSVID(id); err != nil || !got.Certificates[0].Equal(again.Certificates[0]) {
		t.Errorf("Manager.GetSVID = %v", err)
	}
}

// The trust domain of issue defaults to the root's.
func TestCertsTrustDomain(t *testing.T) {
	dir := t.TempDir()
	if code, _, errOut := meshctl(t, "certs", "root", "--dir", dir, "--trust-domain", "example.org"); code != 0 {
		t.Fatal(errOut)
	}
	if code, out, errOut := meshctl(t, "certs", "issue", "--dir", dir, "--ns", "a", "--sa", "b"); code != 0 || !strings.Contains(out, "spiffe://example.org/ns/a/sa/b") {
		t.Fatalf("certs issue = %d\n%s%s", code, out, errOut)
	}
	readSVID(t, dir, spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/b"))
	code, _, errOut := meshctl(t, "certs", "issue", "--dir", dir, "--ns", "a", "--sa", "b", "--trust-domain", "cluster.local")
	if code != 1 || !strings.Contains(errOut, "--trust-domain") || !strings.Contains(errOut, `"example.org", not "cluster.local"`) {
		t.Errorf("issue for another trust domain = %d %q", code, errOut)
	}
}

func TestCertsIssueFromMesh(t *testing.T) {
	dir := t.TempDir()
	if code, _, errOut := meshctl(t, "certs", "root", "--dir", dir); code != 0 {
		t.Fatal(errOut)
	}
	code, out, errOut := meshctl(t, "certs", "issue-from-mesh", "--dir", dir, "-f", handsonMesh, "--ttl", "1h")
	if code != 0 {
		t.Fatalf("issue-from-mesh = %d\n%s%s", code, out, errOut)
	}
	want := []string{"curl", "curl-allow", "curl-deny", "handson"} // the handson ServiceAccounts, sorted
	var issued []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		issued = append(issued, strings.Fields(line)[1])
	}
	for i, sa := range want {
		id := spiffeid.RequireFromString("spiffe://cluster.local/ns/handson/sa/" + sa)
		if i >= len(issued) || issued[i] != id.String() {
			t.Errorf("issued %v, want the handson ServiceAccounts %v", issued, want)
			break
		}
		readSVID(t, dir, id)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "handson"))
	var dirs []string
	for _, e := range entries {
		dirs = append(dirs, e.Name())
	}
	if !slices.Equal(dirs, want) {
		t.Errorf("folders %v, want %v", dirs, want)
	}

	// A folder: every YAML file below it; a ServiceAccount without a namespace is in default;
	// duplicates are issued once; other kinds and List items are handled.
	meshDir := t.TempDir()
	os.MkdirAll(filepath.Join(meshDir, "sub"), 0o755)
	os.WriteFile(filepath.Join(meshDir, "a.yaml"), []byte(`apiVersion: v1
kind: ServiceAccount
metadata: {name: web}
---
# a comment only
---
apiVersion: v1
kind: ConfigMap
metadata: {name: not-an-sa, namespace: x}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: api, namespace: shop}}
`), 0o644)
	os.WriteFile(filepath.Join(meshDir, "sub", "b.yml"), []byte(`{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": "default"}}`), 0o644)
	os.WriteFile(filepath.Join(meshDir, "notes.txt"), []byte("kind: ServiceAccount"), 0o644)
	code, out, errOut = meshctl(t, "certs", "issue-from-mesh", "--dir", dir, "-f", meshDir)
	if code != 0 || strings.Count(out, "issued ") != 2 ||
		!strings.Contains(out, "issued spiffe://cluster.local/ns/default/sa/web ") || !strings.Contains(out, "issued spiffe://cluster.local/ns/shop/sa/api ") {
		t.Errorf("issue-from-mesh of a folder = %d\n%s%s", code, out, errOut)
	}
}

func TestCertsErrors(t *testing.T) {
	dir := t.TempDir()
	noRoot := t.TempDir()
	if code, _, errOut := meshctl(t, "certs", "root", "--dir", dir); code != 0 {
		t.Fatal(errOut)
	}
	empty := filepath.Join(t.TempDir(), "empty.yaml")
	os.WriteFile(empty, []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"), 0o644)
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no subcommand", []string{"certs"}, 2, "usage:\n  meshctl certs root"},
		{"unknown subcommand", []string{"certs", "rotate"}, 2, "usage:"},
		{"help", []string{"certs", "help"}, 0, ""},
		{"flag help", []string{"certs", "issue", "-h"}, 0, ""},
		{"root without --dir", []string{"certs", "root"}, 2, "meshctl certs root: --dir is required"},
		{"bad trust domain", []string{"certs", "root", "--dir", dir, "--trust-domain", "Not A Domain"}, 2, `--trust-domain "Not A Domain"`},
		{"issue without --ns", []string{"certs", "issue", "--dir", dir, "--sa", "curl"}, 2, "meshctl certs issue: --ns is required"},
		{"issue without --sa", []string{"certs", "issue", "--dir", dir, "--ns", "handson"}, 2, "meshctl certs issue: --sa is required"},
		{"issue without --dir", []string{"certs", "issue", "--ns", "handson", "--sa", "curl"}, 2, "meshctl certs issue: --dir is required"},
		{"bad --ttl", []string{"certs", "issue", "--dir", dir, "--ns", "a", "--sa", "b", "--ttl", "5"}, 2, `invalid value "5" for flag -ttl`},
		{"zero --ttl", []string{"certs", "issue", "--dir", dir, "--ns", "a", "--sa", "b", "--ttl", "0s"}, 2, "--ttl must be at least 1s"},
		{"unknown flag", []string{"certs", "issue", "--namespace", "a"}, 2, "flag provided but not defined: -namespace"},
		{"extra argument", []string{"certs", "issue", "--dir", dir, "--ns", "a", "--sa", "b", "c"}, 2, `unexpected argument "c"`},
		{"bad namespace", []string{"certs", "issue", "--dir", dir, "--ns", "..", "--sa", "b"}, 2, `--ns ".." --sa "b": not a valid identity`},
		{"no root yet", []string{"certs", "issue", "--dir", noRoot, "--ns", "a", "--sa", "b"}, 1, "no root CA in " + noRoot + ": run `meshctl certs root --dir " + noRoot + "` first"},
		{"from-mesh without -f", []string{"certs", "issue-from-mesh", "--dir", dir}, 2, "meshctl certs issue-from-mesh: -f is required"},
		{"from-mesh, missing file", []string{"certs", "issue-from-mesh", "--dir", dir, "-f", filepath.Join(dir, "nope.yaml")}, 1, "-f: stat "},
		{"from-mesh, no ServiceAccount", []string{"certs", "issue-from-mesh", "--dir", dir, "-f", empty}, 1, "no ServiceAccount found"},
		{"from-mesh, no root", []string{"certs", "issue-from-mesh", "--dir", noRoot, "-f", handsonMesh}, 1, "no root CA in"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errOut := meshctl(t, c.args...)
			if code != c.code || !strings.Contains(errOut, c.want) {
				t.Errorf("meshctl %s = %d\nstdout: %s\nstderr: %s\nwant exit %d and stderr containing %q", strings.Join(c.args, " "), code, out, errOut, c.code, c.want)
			}
		})
	}
	if entries, _ := os.ReadDir(noRoot); len(entries) != 0 {
		t.Errorf("failed commands wrote into %s: %v", noRoot, entries)
	}
}
