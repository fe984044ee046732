package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// EnvNode opts in to the node tests: they take minutes and change the host (bridges,
// iptables, sysctls, containerd), so they run only when it is set (.ci/run and
// `make demo-cluster` set it).
const EnvNode = "GOAMBIENT_NODE"

var shared struct {
	once  sync.Once
	node  *Node
	err   error
	dir   string
	build time.Duration
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.node != nil {
		if err := shared.node.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "node teardown:", err)
			code = 1
		}
		if os.Getenv("GOAMBIENT_NODE_KEEP") == "" {
			os.RemoveAll(shared.dir)
		} else {
			fmt.Fprintln(os.Stderr, "node files kept in", shared.dir)
		}
	}
	os.Exit(code)
}

// testNode returns the test binary's node, started by its first caller with the install
// bundle applied and its pods ready; it skips t, saying why, when the node cannot run here.
func testNode(t *testing.T) *Node {
	t.Helper()
	if os.Getenv(EnvNode) == "" {
		t.Skipf("the real node's tests are opt-in: set %s=1 (root, containerd, runc, CNI plugins and the kube binaries; see integration/node/README.md)", EnvNode)
	}
	if err := Requirements(); err != nil {
		t.Skip("no real node here: " + err.Error())
	}
	shared.once.Do(func() {
		ctx := context.Background()
		dir, err := os.MkdirTemp("", "gmnode-")
		if err != nil {
			shared.err = err
			return
		}
		shared.dir = dir
		root, err := repoRoot()
		if err != nil {
			shared.err = err
			return
		}
		t0 := time.Now()
		images, err := BuildImages(ctx, root, filepath.Join(dir, "build"))
		if err != nil {
			shared.err = err
			return
		}
		shared.build = time.Since(t0)
		shared.node, shared.err = Start(ctx, filepath.Join(dir, "node"), images)
		if shared.err != nil {
			return
		}
		shared.err = shared.node.Install(ctx, root)
	})
	if shared.err != nil {
		if shared.node != nil {
			logNode(t, shared.node)
		}
		t.Fatalf("the node did not come up: %v", shared.err)
	}
	n := shared.node
	t.Cleanup(func() {
		if t.Failed() {
			logNode(t, n)
		}
		hits, err := n.GuardHits()
		if err != nil {
			t.Error(err)
		} else if hits["FORWARD"]+hits["INPUT"] != 0 {
			t.Errorf("the guard rules dropped packets a pod sent to addresses the test did not create: %v\n%s", hits, n.GuardLog())
		}
	})
	return n
}

func logNode(t *testing.T, n *Node) {
	for name, path := range n.Logs() {
		t.Logf("%s (last lines of %s):\n%s", name, path, Tail(path, 25))
	}
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("go list -m: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// TestNodeUp: the node is Ready, CoreDNS and the install bundle's pods (xdsserver, the
// ztunnel DaemonSet) run from the images built here, and the guard counted nothing.
func TestNodeUp(t *testing.T) {
	n := testNode(t)
	ctx := context.Background()
	t.Logf("images built in %v; node Ready %v after the start", shared.build.Round(time.Second), n.ReadyAt.Sub(n.Started).Round(time.Second))
	out, err := n.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("$ kubectl get pods -A -o wide\n%s", out)
	for _, want := range []string{"coredns-", "xdsserver-", "ztunnel-"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %s pod", want)
		}
	}
}
