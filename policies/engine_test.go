package policies

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

type decisionCase struct {
	Name     string   `json:"name"`
	Files    []string `json:"files"`
	Policies string   `json:"policies"`
	Request  Request  `json:"request"`
	Want     Decision `json:"want"`
}

// loadCase reads a case's policies; any load error fails the test.
func loadCase(t *testing.T, c decisionCase) Objects {
	t.Helper()
	var objs Objects
	for _, f := range c.Files {
		o, errs := LoadPath(filepath.Join("..", f))
		for _, e := range errs {
			t.Fatal(e)
		}
		objs.Append(o)
	}
	if c.Policies != "" {
		o, errs := Load([]byte(c.Policies), c.Name)
		for _, e := range errs {
			t.Fatal(e)
		}
		objs.Append(o)
	}
	return objs
}

func TestDecisions(t *testing.T) {
	data, err := os.ReadFile("testdata/decisions.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cases []decisionCase
	if err := yaml.Unmarshal(data, &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			objs := loadCase(t, c)
			e := Compile(objs.AuthorizationPolicies, Options{})
			got := e.Decide(&c.Request)
			want := c.Want
			if want.Rule == 0 && want.Policy == "" {
				want.Rule = -1
			}
			if want.DryRun.Applied && want.DryRun.Policy == "" {
				want.DryRun.Rule = -1
			}
			gotJSON, _ := yaml.Marshal(got)
			wantJSON, _ := yaml.Marshal(want)
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("decision:\n%s\nwant:\n%s", gotJSON, wantJSON)
			}
		})
	}
}

func TestAuditAcrossTargetsIsOrderedOnceAndAllocationFree(t *testing.T) {
	const yaml = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b, namespace: foo}
spec:
  action: AUDIT
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}, {kind: Service, name: svc}]
  rules: [{}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: foo}
spec:
  action: AUDIT
  targetRefs: [{kind: Service, name: svc}]
  rules: [{}]
`
	objs, errs := Load([]byte(yaml), "audit")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	e := Compile(objs.AuthorizationPolicies, Options{})
	r := Request{Target: Target{Namespace: "foo", Waypoint: true, Gateway: "wp", Service: "svc"}}
	var d Decision
	e.Evaluate(&r, &d)
	var got []string
	for _, a := range d.Audit {
		got = append(got, a.Policy+"#"+strconv.Itoa(a.Rule))
	}
	// Envoy compares "rule[10]" with "rule[1]": '0' sorts before ']', so rule 10 comes first.
	want := "foo/a#0 foo/b#0 foo/b#10 foo/b#1 foo/b#2 foo/b#3 foo/b#4 foo/b#5 foo/b#6 foo/b#7 foo/b#8 foo/b#9"
	if strings.Join(got, " ") != want {
		t.Errorf("audit = %s\nwant    %s", strings.Join(got, " "), want)
	}
	if n := testing.AllocsPerRun(50, func() { e.Evaluate(&r, &d) }); n != 0 {
		t.Errorf("allocations = %v, want 0", n)
	}
}
