package model_test

import (
	"os"
	"strings"
	"testing"

	"github.com/goambient/goambient/xdsserver/internal/golden"
	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/wds"
)

// TestEgressProblemsGolden: every problem of testdata/egress-invalid.yaml with its object and
// field path, and which ServiceEntries and WorkloadEntries are kept.
func TestEgressProblemsGolden(t *testing.T) {
	const in = "testdata/egress-invalid.yaml"
	data, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	set, problems, err := kubeobj.Load(data, in)
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
	b.WriteString("errors:\n")
	for _, e := range append(problems, m.Errors...) {
		b.WriteString("- " + e.Error() + "\n")
	}
	b.WriteString("warnings:\n")
	for _, w := range m.Warnings {
		b.WriteString("- " + w.Error() + "\n")
	}
	b.WriteString("kept:\n")
	for _, se := range m.ServiceEntries {
		b.WriteString("- ServiceEntry " + se.Key() + "\n")
		for _, s := range se.Services {
			var vips []string
			for _, ip := range s.VIPs {
				vips = append(vips, ip.String())
			}
			b.WriteString("  - " + s.Hostname + " VIPs [" + strings.Join(vips, " ") + "]\n")
		}
	}
	for _, w := range m.EntryWorkloads {
		b.WriteString("- " + w.Kind + " workload " + w.UID + "\n")
	}
	golden.Check(t, "testdata/egress-invalid.golden", b.String())
	kept := map[string]bool{}
	for _, se := range m.ServiceEntries {
		kept[se.Name] = true
	}
	for _, want := range []string{"good", "same-address", "zz-duplicate"} {
		if !kept[want] {
			t.Errorf("ServiceEntry %s was left out", want)
		}
	}
	if len(m.ServiceEntries) != 3 {
		t.Errorf("%d ServiceEntries kept, want good, same-address and zz-duplicate", len(m.ServiceEntries))
	}
	// The workload API has one resource per name, and a ztunnel accepts it.
	seen := map[string]bool{}
	for _, a := range wds.Translate(m, wds.Options{}).Addresses {
		if n := wds.AddressName(a); seen[n] {
			t.Errorf("resource %s twice", n)
		} else {
			seen[n] = true
		}
	}
}

// TestOutboundTrafficPolicyConfig: the mesh config's mode is validated and carried.
func TestOutboundTrafficPolicyConfig(t *testing.T) {
	for _, tc := range []struct{ mode, want string }{{"", "ALLOW_ANY"}, {"REGISTRY_ONLY", "REGISTRY_ONLY"}, {"ALLOW_ANY", "ALLOW_ANY"}} {
		m, err := model.Build(nil, model.Config{OutboundTrafficPolicy: tc.mode})
		if err != nil {
			t.Fatal(err)
		}
		if m.OutboundTrafficPolicy != tc.want {
			t.Errorf("mode %q: mesh has %q", tc.mode, m.OutboundTrafficPolicy)
		}
	}
	if _, err := model.Build(nil, model.Config{OutboundTrafficPolicy: "registry_only"}); err == nil {
		t.Error("a misspelt mode was accepted")
	}
	// The istio ConfigMap's mesh config sets it, as istiod reads it there.
	set, errs, err := kubeobj.Load([]byte(`apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy: {mode: REGISTRY_ONLY}
`), "mesh.yaml")
	if err != nil || len(errs) > 0 {
		t.Fatal(err, errs)
	}
	m, err := model.Build(set, model.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if m.OutboundTrafficPolicy != "REGISTRY_ONLY" || len(m.Errors) > 0 {
		t.Errorf("from the istio ConfigMap: mesh has %q, errors %v", m.OutboundTrafficPolicy, m.Errors)
	}
}
