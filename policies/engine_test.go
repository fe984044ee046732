package policies

import (
	"os"
	"path/filepath"
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
