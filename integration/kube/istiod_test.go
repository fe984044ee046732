package kube_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/ztunnel/xds"
)

// TestIstiodPeer runs goambient beside Istio's own control plane (pilot-discovery at go.mod's
// istio.io/istio, built by integration/istiod/tools/build.sh), both reading the same real API
// server. Skipped, saying why, without $GOAMBIENT_KUBE_BIN_DIR or $GOAMBIENT_ISTIO_BIN_DIR.
func TestIstiodPeer(t *testing.T) {
	p := newPeerEnv(t)
	t.Run("WorkloadAPI", func(t *testing.T) { testSameWorkloadAPI(t, p) })
	t.Run("Ztunnel", func(t *testing.T) { testZtunnelUnderIstiod(t, p) })
	t.Run("WaypointNode", func(t *testing.T) { testWaypointNodeUnderIstiod(t, p) })
}

// testSameWorkloadAPI: xdsserver (Kubernetes mode, its defaults) and istiod serve, for the same
// objects, the same workload API (delta ADS istio.workload.Address and
// istio.security.Authorization), resource by resource and field by field, except for the
// differences listed in acceptedDiffs, each with why.
func testSameWorkloadAPI(t *testing.T, p *peerEnv) {
	gw := watch(t, p.startXdsserverPlain(t, p.net+".238"))
	is := p.watchIstiod(t, Node)
	var lines []string
	deadline := time.Now().Add(time.Minute)
	for {
		lines = workloadAPIDiff(normalise(gw.get(t)), normalise(is.get(t)))
		if len(unaccepted(lines)) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond) // either side may still be on its way to the last objects
	}
	for _, l := range lines {
		t.Logf("%s (accepted: %s)", l, acceptedWhy(l))
	}
	if bad := unaccepted(lines); len(bad) > 0 {
		t.Errorf("%d differences between xdsserver (left) and istiod (right) that are not accepted:\n%s", len(bad), strings.Join(bad, "\n"))
	}
	got, want := gw.get(t), is.get(t)
	t.Logf("compared %d (xdsserver) and %d (istiod) addresses, %d and %d authorizations",
		len(got[xds.AddressType]), len(want[xds.AddressType]), len(got[xds.AuthorizationType]), len(want[xds.AuthorizationType]))
	if len(want[xds.AddressType]) < 30 || len(want[xds.AuthorizationType]) < 5 {
		t.Errorf("istiod's workload API is too small to compare")
	}
}

// normalise sorts what the workload API leaves unordered.
func normalise(set map[string]map[string]proto.Message) map[string]map[string]proto.Message {
	out := map[string]map[string]proto.Message{}
	for typ, byName := range set {
		out[typ] = map[string]proto.Message{}
		for name, m := range byName {
			m = proto.Clone(m)
			if a, ok := m.(*workloadapi.Address); ok {
				if w := a.GetWorkload(); w != nil {
					slices.Sort(w.AuthorizationPolicies)
				}
			}
			out[typ][name] = m
		}
	}
	return out
}

// workloadAPIDiff lists the differences: "type name: path: left ≠ right", "only in …".
func workloadAPIDiff(left, right map[string]map[string]proto.Message) []string {
	var out []string
	for _, typ := range xds.Types {
		short := typ[strings.LastIndexByte(typ, '.')+1:]
		names := map[string]bool{}
		for n := range left[typ] {
			names[n] = true
		}
		for n := range right[typ] {
			names[n] = true
		}
		for _, n := range slices.Sorted(maps.Keys(names)) {
			l, r := left[typ][n], right[typ][n]
			switch {
			case r == nil:
				out = append(out, fmt.Sprintf("%s %s: only in xdsserver", short, n))
			case l == nil:
				out = append(out, fmt.Sprintf("%s %s: only in istiod", short, n))
			default:
				for _, d := range protoDiff("", l, r) {
					out = append(out, fmt.Sprintf("%s %s: %s", short, n, d))
				}
			}
		}
	}
	return out
}

// acceptedDiffs are the differences between xdsserver and istiod kept on purpose: a line
// containing every substring of one entry is accepted.
var acceptedDiffs = []struct {
	match []string
	why   string
}{
	{[]string{"Authorization peer-wp/converted_peer_authentication_echo-ports: only in xdsserver"},
		"a PERMISSIVE workload PeerAuthentication's STRICT port, without a namespace policy, under a mesh-wide STRICT: " +
			"istiod's convertPeerAuthentication takes the mesh's STRICT as the port's parent whatever the workload's own mode " +
			"(an operator-precedence slip), and sends nothing, so plaintext reaches the port; goambient keeps it STRICT " +
			"(policies/SEMANTICS.md, \"Where goambient keeps a STRICT port istiod drops\")"},
}

// acceptedWhy is why a difference is accepted, "" when it is not.
func acceptedWhy(l string) string {
	for _, a := range acceptedDiffs {
		all := true
		for _, m := range a.match {
			all = all && strings.Contains(l, m)
		}
		if all {
			return a.why
		}
	}
	return ""
}

func unaccepted(lines []string) []string {
	var out []string
	for _, l := range lines {
		if acceptedWhy(l) == "" {
			out = append(out, l)
		}
	}
	return out
}
