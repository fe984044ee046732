package model_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/goambient/goambient/xdsserver/internal/golden"
	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
)

// TestIngressGolden: testdata/ingress.yaml's Gateway of class istio, its listeners' and
// routes' status conditions, the virtual hosts each served listener routes with, and every
// problem with its object and field. A missing or unusable Secret leaves only its listener
// out; the tutorial's HTTPRoute is attached to the HTTP listener.
func TestIngressGolden(t *testing.T) {
	data, err := os.ReadFile("testdata/ingress.yaml")
	if err != nil {
		t.Fatal(err)
	}
	set, problems, err := kubeobj.Load(data, "testdata/ingress.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Build(set, model.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Validate(); err != nil {
		t.Fatalf("built mesh is not valid: %v", err)
	}
	var b strings.Builder
	conds := func(indent string, cs []model.Condition) {
		for _, c := range cs {
			fmt.Fprintf(&b, "%s%s=%s %s: %s\n", indent, c.Type, c.Status, c.Reason, c.Message)
		}
	}
	for _, g := range m.Ingress.Gateways {
		fmt.Fprintf(&b, "Gateway %s (class %s, identity %s)\n", g.Key(), g.Class, g.Identity(m.TrustDomain))
		conds("  ", g.Conditions)
		for _, l := range g.Listeners {
			cert := ""
			if l.Cert != nil {
				cert = " cert " + l.Cert.Secret
			}
			fmt.Fprintf(&b, "  listener %s %s %d %q served=%v attached=%d%s\n", l.Name, l.Protocol, l.Port, l.Hostname, l.Served, l.Attached, cert)
			conds("    ", l.Conditions)
			for _, h := range l.Hosts {
				fmt.Fprintf(&b, "    host %s\n", h.Hostname)
				for _, r := range h.Rules {
					var to []string
					for _, d := range r.HTTP.GetRoute() {
						to = append(to, d.GetDestination().GetHost())
					}
					if dr := r.HTTP.GetDirectResponse(); dr != nil {
						to = append(to, fmt.Sprintf("direct %d", dr.GetStatus()))
					}
					fmt.Fprintf(&b, "      %s %s %s → %s\n", r.Object, r.Field, r.HTTP.GetMatch(), strings.Join(to, ", "))
				}
			}
		}
	}
	for _, r := range m.Ingress.Routes {
		fmt.Fprintf(&b, "HTTPRoute %s\n", r.Route.Key())
		for _, p := range r.Parents {
			fmt.Fprintf(&b, "  parentRefs[%d] %s section %q port %d\n", p.Index, p.Gateway, p.SectionName, p.Port)
			conds("    ", p.Conditions)
		}
	}
	b.WriteString("errors:\n")
	for _, e := range append(problems, m.Errors...) {
		b.WriteString("- " + e.Error() + "\n")
	}
	b.WriteString("warnings:\n")
	for _, w := range m.Warnings {
		b.WriteString("- " + w.Error() + "\n")
	}
	golden.Check(t, "testdata/ingress.golden", b.String())

	g := m.IngressGateway("default", "gateway")
	for _, l := range g.Listeners {
		want := l.Name == "default" || l.Name == "https" || l.Name == "same-only"
		if l.Served != want {
			t.Errorf("listener %s served = %v, want %v", l.Name, l.Served, want)
		}
	}
	if c := model.ConditionOf(g.Conditions, "Programmed"); c.Status != "True" {
		t.Errorf("the gateway is programmed with its good listeners: %+v", c)
	}
	if m.IngressUsesWaypoint(m.Service("default", "appb")) {
		t.Errorf("appb has no waypoint here: the label alone does not send ingress traffic to one")
	}
}
