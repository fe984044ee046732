package istiod

import (
	"os"
	"regexp"
	"testing"
)

// TestToolsPinRootVersion: the module that builds pilot-discovery (tools/) requires the
// istio.io/istio the root module does, so the istiod the peer tests run is the one whose
// workload API types goambient compiles against.
func TestToolsPinRootVersion(t *testing.T) {
	re := regexp.MustCompile(`(?m)^\s*(?:require\s+)?istio\.io/istio\s+(\S+)`)
	version := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		m := re.FindSubmatch(b)
		if m == nil {
			t.Fatalf("%s requires no istio.io/istio", path)
		}
		return string(m[1])
	}
	if root, tools := version("../../go.mod"), version("tools/go.mod"); root != tools {
		t.Errorf("go.mod requires istio.io/istio %s, tools/go.mod %s: run (cd integration/istiod/tools && go get istio.io/istio@%s && go mod tidy)", root, tools, root)
	}
}
