package l4

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/goambient/goambient/policies"
)

func TestHandsonL4(t *testing.T) {
	objs, errs := policies.LoadPath("../../manifests/examples/handson/L4-authorization-policy.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	z := policies.ToZtunnel(objs, policies.Options{})
	e := Compile(z.Authorizations())
	w := &Workload{Namespace: "handson", Policies: z.WorkloadPolicies("handson", map[string]string{"app": "handson"})}
	deny := e.Check(w, &Conn{SrcIdentity: "spiffe://cluster.local/ns/handson/sa/curl-deny", DstPort: 8080})
	if deny.Allowed || deny.Policy != "handson/layer4-authz" || deny.Reason != "explicitly denied by: handson/layer4-authz" {
		t.Errorf("curl-deny: %+v", deny)
	}
	if r := e.Check(w, &Conn{SrcIdentity: "spiffe://cluster.local/ns/handson/sa/curl-allow", DstPort: 8080}); !r.Allowed {
		t.Errorf("curl-allow: %+v", r)
	}
}

func TestStrictDeniesPlaintext(t *testing.T) {
	objs, errs := policies.LoadPath("../../manifests/examples/demo-strict")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	z := policies.ToZtunnel(objs, policies.Options{})
	e := Compile(z.Authorizations())
	w := &Workload{Namespace: "demo", Policies: z.WorkloadPolicies("demo", map[string]string{"app": "backend"})}
	for _, c := range []struct {
		id      string
		allowed bool
		reason  string
	}{
		{"", false, "explicitly denied by: istio-system/istio_converted_static_strict"},
		{"spiffe://cluster.local/ns/demo/sa/attacker", false, "allow policies exist, but none allowed"},
		{"spiffe://cluster.local/ns/demo/sa/frontend", true, "allowed by: demo/backend-allow-frontend-only"},
	} {
		r := e.Check(w, &Conn{SrcIdentity: c.id, SrcIP: netip.MustParseAddr("10.0.0.1"), DstPort: 8080})
		if r.Allowed != c.allowed || r.Reason != c.reason {
			t.Errorf("%q: %+v, want allowed=%v %q", c.id, r, c.allowed, c.reason)
		}
	}
}

// TestIdentityForms: how ztunnel matches principals, namespaces and serviceAccounts (Rust
// ztunnel's src/rbac.rs and Identity::from_str), and where that differs from the waypoint
// (policies.Engine, istiod's regexes over the URI) on the same policy and peer.
func TestIdentityForms(t *testing.T) {
	objs, errs := policies.LoadPath("testdata/identity-forms.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	z := policies.ToZtunnel(objs, policies.Options{})
	if len(z.Warnings) > 0 {
		t.Fatal(z.Warnings)
	}
	l4 := Compile(z.Authorizations())
	engine := policies.Compile(objs.AuthorizationPolicies, policies.Options{})
	for _, c := range []struct {
		app, id           string
		ztunnel, waypoint bool // allowed by ztunnel, and by the same policies in Envoy's RBAC
	}{
		// "s*a" is exact at ztunnel, a glob over the URI at a waypoint; "*a" a suffix of the namespace.
		{"glob", "spiffe://cluster.local/ns/shop/sa/client", false, true},
		{"glob", "spiffe://cluster.local/ns/s*a/sa/client", true, true},
		{"glob", "spiffe://cluster.local/ns/alpha/sa/client", true, true},
		{"glob", "spiffe://cluster.local/ns/foo/sa/client", false, true},
		// Extra segments: no identity at ztunnel; istiod's regexes allow them.
		{"sa", "spiffe://cluster.local/ns/prod-eu/sa/x", true, true},
		{"sa", "spiffe://cluster.local/ns/prod-eu/extra/sa/x", false, true},
		{"sa", "spiffe://cluster.local/ns/prod-eu/sa/x/extra", false, true},
		{"any", "spiffe://cluster.local/ns/a/sa/b", true, true},
		{"any", "spiffe://cluster.local/ns/a/x/sa/b", false, true},
		{"any", "spiffe://cluster.local/workload", false, true},
		{"any", "cluster.local/ns/a/sa/b", false, false},
		// Empty parts still parse at ztunnel (five parts).
		{"any", "spiffe://td/ns//sa/", true, true},
		// A STRICT-style DENY of "no principal" catches an identity ztunnel cannot parse.
		{"strict", "spiffe://cluster.local/ns/a/x/sa/b", false, true},
		{"strict", "spiffe://cluster.local/ns/a/sa/b", true, true},
		{"strict", "", false, false},
	} {
		labels := map[string]string{"app": c.app}
		got := l4.Check(&Workload{Namespace: "shop", Policies: z.WorkloadPolicies("shop", labels)}, &Conn{SrcIdentity: c.id, DstPort: 8080})
		if got.Allowed != c.ztunnel {
			t.Errorf("ztunnel, app=%s, peer %q: %+v, want allowed=%v", c.app, c.id, got, c.ztunnel)
		}
		principal, _ := strings.CutPrefix(c.id, "spiffe://")
		if !strings.HasPrefix(c.id, "spiffe://") {
			principal = "" // the filter takes only a SPIFFE URI as the peer principal
		}
		d := engine.Decide(&policies.Request{Principal: principal, DestPort: 8080, Target: policies.Target{Namespace: "shop", Labels: labels}})
		if d.Allowed != c.waypoint {
			t.Errorf("Envoy RBAC, app=%s, peer %q: %+v, want allowed=%v", c.app, c.id, d, c.waypoint)
		}
	}
}

// TestL4AgreesWithTheEngine checks, on random policies using only L4 attributes, that the
// projection evaluated as ztunnel does decides as the full engine does for the same connection.
func TestL4AgreesWithTheEngine(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for i := range 3000 {
		doc := randomL4Policies(rng)
		objs, errs := policies.Load([]byte(doc), "random")
		if len(errs) > 0 {
			t.Fatalf("generated an invalid policy: %v\n%s", errs, doc)
		}
		full := policies.Compile(objs.AuthorizationPolicies, policies.Options{})
		z := policies.ToZtunnel(objs, policies.Options{})
		l4 := Compile(z.Authorizations())
		for range 4 {
			ns := pick(rng, "foo", "bar")
			labels := map[string]string{"app": pick(rng, "a", "b")}
			c := Conn{SrcIP: netip.MustParseAddr(pick(rng, "10.0.0.1", "10.1.2.3", "192.168.0.1")), DstIP: netip.MustParseAddr(pick(rng, "10.9.0.1", "172.16.0.1")), DstPort: uint16(pick(rng, 80, 8080, 9090))}
			principal := ""
			if rng.IntN(5) > 0 {
				principal = fmt.Sprintf("cluster.local/ns/%s/sa/%s", pick(rng, "foo", "bar", "baz"), pick(rng, "x", "y"))
				c.SrcIdentity = "spiffe://" + principal
			}
			req := policies.Request{Principal: principal, SourceIP: c.SrcIP, DestIP: c.DstIP, DestPort: c.DstPort, Target: policies.Target{Namespace: ns, Labels: labels}}
			want := full.Decide(&req)
			got := l4.Check(&Workload{Namespace: ns, Policies: z.WorkloadPolicies(ns, labels)}, &c)
			if got.Allowed != want.Allowed {
				t.Fatalf("case %d: ztunnel %+v, engine %+v\nconnection %+v in %s %v\n%s", i, got, want, c, ns, labels, doc)
			}
		}
	}
}

func pick[T any](rng *rand.Rand, vs ...T) T { return vs[rng.IntN(len(vs))] }

// randomL4Policies writes 1-4 valid policies that use only what ztunnel enforces.
func randomL4Policies(rng *rand.Rand) string {
	var docs []string
	for i := range 1 + rng.IntN(4) {
		var b strings.Builder
		fmt.Fprintf(&b, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p%d, namespace: %s}\nspec:\n", i, pick(rng, "foo", "bar", "istio-system"))
		if rng.IntN(2) == 0 {
			fmt.Fprintf(&b, "  selector: {matchLabels: {app: %s}}\n", pick(rng, "a", "b"))
		}
		action := pick(rng, "ALLOW", "DENY")
		fmt.Fprintf(&b, "  action: %s\n", action)
		nrules := rng.IntN(3)
		if action == "DENY" || rng.IntN(4) > 0 {
			nrules++
		}
		if nrules > 0 {
			b.WriteString("  rules:\n")
		}
		for range nrules {
			b.WriteString("  - {}\n")
			rule := []string{}
			if rng.IntN(2) == 0 {
				rule = append(rule, "from: [{source: {"+randomSource(rng)+"}}]")
			}
			if rng.IntN(2) == 0 {
				rule = append(rule, fmt.Sprintf("to: [{operation: {%s: [\"%d\"]}}]", pick(rng, "ports", "notPorts"), pick(rng, 80, 8080)))
			}
			if rng.IntN(3) == 0 {
				key, vals := pick(rng, "source.ip", "destination.ip", "destination.port", "source.namespace", "source.principal"), ""
				switch key {
				case "source.ip", "destination.ip":
					vals = pick(rng, "10.0.0.0/8", "172.16.0.1")
				case "destination.port":
					vals = pick(rng, "80", "9090")
				case "source.namespace":
					vals = pick(rng, "foo", "ba*")
				default:
					vals = pick(rng, "cluster.local/ns/foo/sa/x", "*/sa/y")
				}
				rule = append(rule, fmt.Sprintf("when: [{key: %s, %s: [%q]}]", key, pick(rng, "values", "notValues"), vals))
			}
			if len(rule) > 0 {
				s := b.String()
				b.Reset()
				b.WriteString(strings.TrimSuffix(s, "{}\n") + "{" + strings.Join(rule, ", ") + "}\n")
			}
		}
		docs = append(docs, b.String())
	}
	return strings.Join(docs, "---\n")
}

func randomSource(rng *rand.Rand) string {
	switch rng.IntN(5) {
	case 0:
		return fmt.Sprintf("%s: [%q]", pick(rng, "principals", "notPrincipals"), pick(rng, "cluster.local/ns/foo/sa/x", "cluster.local/ns/bar/*", "*/sa/y", "*"))
	case 1:
		return fmt.Sprintf("%s: [%q]", pick(rng, "namespaces", "notNamespaces"), pick(rng, "foo", "ba*", "*z", "*"))
	case 2:
		return fmt.Sprintf("%s: [%q]", pick(rng, "serviceAccounts", "notServiceAccounts"), pick(rng, "x", "bar/y"))
	case 3:
		return fmt.Sprintf("%s: [%q]", pick(rng, "ipBlocks", "notIpBlocks"), pick(rng, "10.0.0.0/16", "192.168.0.1"))
	}
	return fmt.Sprintf("principals: [%q], ipBlocks: [%q]", pick(rng, "cluster.local/ns/foo/sa/x", "*"), pick(rng, "10.0.0.0/8"))
}

func TestCheckDoesNotAllocate(t *testing.T) {
	objs, _ := policies.LoadPath("../../manifests/examples/handson/L4-authorization-policy.yaml")
	z := policies.ToZtunnel(objs, policies.Options{})
	e := Compile(z.Authorizations())
	w := &Workload{Namespace: "handson", Policies: z.WorkloadPolicies("handson", map[string]string{"app": "handson"})}
	c := &Conn{SrcIdentity: "spiffe://cluster.local/ns/handson/sa/curl-deny", DstPort: 8080}
	if n := testing.AllocsPerRun(100, func() { e.Check(w, c) }); n != 0 {
		t.Errorf("Check allocates %v times, want 0", n)
	}
}
