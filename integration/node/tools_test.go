package node

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestToolsIstioVersion: the istio-cni the node runs is built from the istio.io/istio the root
// module pins (tools/ is a module of its own; its go.mod must follow the root's).
func TestToolsIstioVersion(t *testing.T) {
	re := regexp.MustCompile(`(?m)^\s*istio\.io/istio (v\S+)`)
	version := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		m := re.FindSubmatch(b)
		if m == nil {
			t.Fatalf("%s does not require istio.io/istio", path)
		}
		return string(m[1])
	}
	root, tools := version(filepath.Join("..", "..", "go.mod")), version(filepath.Join("tools", "go.mod"))
	if root != tools {
		t.Errorf("integration/node/tools requires istio.io/istio %s, the root module %s: run (cd integration/node/tools && go get istio.io/istio@%s && go mod tidy)", tools, root, root)
	}
}
