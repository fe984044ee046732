package demo

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const examples = "../../../../manifests/examples"

// notChecked are things a README describes that the demo does not check, and why.
var notChecked = map[string]string{
	// ztunnel (Istio's too) names no policy when ALLOW policies exist and none matched: its log
	// says "allow policies exist, but none allowed", which the scenario checks.
	"bookinfo-lite/default/allow-nothing": "ztunnel's log names no policy for an ALLOW miss",
}

func TestScenariosLoad(t *testing.T) {
	names := Names()
	if !slices.Equal(names, []string{"bookinfo-lite", "demo-strict", "egress", "gateway-api", "handson", "jwt", "traffic"}) {
		t.Fatalf("scenarios: %v", names)
	}
	for _, n := range names {
		sc, err := Load(n)
		if err != nil {
			t.Fatal(err)
		}
		if sc.Name != n {
			t.Errorf("%s: name %q", n, sc.Name)
		}
		for _, f := range sc.Files() {
			if _, err := os.Stat(filepath.Join(examples, n, f)); err != nil {
				t.Errorf("%s: %v", n, err)
			}
		}
		if sc.Checks() == 0 {
			t.Errorf("%s: no checks", n)
		}
	}
	if _, err := Load("nope"); err == nil {
		t.Error("Load(nope) did not fail")
	}
}

// readmeSteps splits a README into its "## Step N" sections.
func readmeSteps(t *testing.T, path string) map[int]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	cur := 0
	for _, l := range strings.Split(string(b), "\n") {
		if m := stepHeader.FindStringSubmatch(l); m != nil {
			cur, _ = strconv.Atoi(m[1])
			continue
		}
		if cur > 0 {
			out[cur] += l + "\n"
		}
	}
	return out
}

var (
	stepHeader = regexp.MustCompile(`^## Step (\d+)`)
	backticked = regexp.MustCompile("`([^`]+)`")
	yamlFile   = regexp.MustCompile(`[A-Za-z0-9-]+\.yaml`)
	statusCode = regexp.MustCompile(`(?:→|[a-z-]+: )\s*(\d{3})\b`)
	jsonField  = regexp.MustCompile(`^"(\w+)": "?([^"]*)"?$`)
	policyName = regexp.MustCompile(`^[a-z0-9-]+/[a-z0-9-]+$`)
	curlCmd    = regexp.MustCompile(`^curl -X (\w+)(?: -d '[^']*')? (\S+)$`)
)

// TestScenariosCoverReadmes checks, as far as a program can read them, that each scenario
// checks what its README describes: every step, every YAML file applied or removed in it,
// every status code, "no HTTP response", every client → destination call, every SPIFFE
// identity and policy name expected in logs, and every access-log field.
func TestScenariosCoverReadmes(t *testing.T) {
	for _, name := range Names() {
		sc, err := Load(name)
		if err != nil {
			t.Fatal(err)
		}
		sections := readmeSteps(t, filepath.Join(examples, name, "README.md"))
		if len(sections) == 0 {
			t.Fatalf("%s: README has no steps", name)
		}
		for n := range sections {
			if !slices.ContainsFunc(sc.Steps, func(s Step) bool { return s.Readme == n }) {
				t.Errorf("%s: README step %d is not played", name, n)
			}
		}
		for _, st := range sc.Steps {
			if sections[st.Readme] == "" {
				t.Errorf("%s: step %q refers to README step %d, which does not exist", name, st.Title, st.Readme)
			}
		}
		for n, text := range sections {
			var steps []Step
			for _, s := range sc.Steps {
				if s.Readme == n {
					steps = append(steps, s)
				}
			}
			checkSection(t, name, n, text, steps)
		}
	}
}

func checkSection(t *testing.T, name string, n int, text string, steps []Step) {
	t.Helper()
	where := name + " README step " + strconv.Itoa(n)
	var files, logText []string
	var calls []Call
	access := map[string][]string{}
	for _, s := range steps {
		files = append(files, s.Apply...)
		files = append(files, s.Delete...)
		if s.Patch != nil {
			files = append(files, s.Patch.File)
		}
		calls = append(calls, s.Calls...)
		for _, c := range s.Calls {
			for k, v := range c.AccessLog {
				access[k] = append(access[k], v)
			}
			if c.Sample != nil {
				for k, v := range c.Sample.Count {
					access[k] = append(access[k], v)
				}
			}
		}
		for _, l := range s.Logs {
			logText = append(logText, l.All...)
			if l.TLS != nil {
				logText = append(logText, l.TLS.Identity)
			}
			for k, v := range l.AccessLog {
				access[k] = append(access[k], v)
			}
		}
	}
	logs := strings.Join(logText, "\n")

	for _, f := range yamlFile.FindAllString(text, -1) {
		if !slices.Contains(files, f) {
			t.Errorf("%s: %s is not applied, patched or removed", where, f)
		}
	}
	for _, m := range statusCode.FindAllStringSubmatch(text, -1) {
		if strings.HasPrefix(m[0], "status: ") {
			continue // "http status: 401", a log's words
		}
		code, _ := strconv.Atoi(m[1])
		if !slices.ContainsFunc(calls, func(c Call) bool { return c.Status == code }) {
			t.Errorf("%s: no call expects %d", where, code)
		}
	}
	if strings.Contains(text, "no HTTP response") || strings.Contains(text, "refused or reset") || strings.Contains(text, "fail again") {
		if !slices.ContainsFunc(calls, func(c Call) bool { return c.Closed }) {
			t.Errorf("%s: no call expects a closed connection", where)
		}
	}
	for _, m := range backticked.FindAllStringSubmatch(text, -1) {
		q := m[1]
		switch {
		case strings.Contains(q, " → "):
			from, to, _ := strings.Cut(q, " → ")
			from = strings.Fields(from)[0]
			if !slices.ContainsFunc(calls, func(c Call) bool {
				_, pod, _ := strings.Cut(c.From, "/")
				return strings.HasPrefix(pod, from) && strings.Contains(c.URL, to)
			}) {
				t.Errorf("%s: no call from %s to %s", where, from, to)
			}
		case curlCmd.MatchString(q):
			cm := curlCmd.FindStringSubmatch(q)
			if !slices.ContainsFunc(calls, func(c Call) bool {
				method := c.Method
				if method == "" {
					method = "GET"
				}
				return method == cm[1] && strings.Contains(c.URL, cm[2])
			}) {
				t.Errorf("%s: no call %s", where, q)
			}
		case strings.HasPrefix(q, "spiffe://") || strings.Contains(q, `="spiffe://`):
			if !strings.Contains(logs, q) {
				t.Errorf("%s: no log check names %s", where, q)
			}
		case jsonField.MatchString(q):
			fm := jsonField.FindStringSubmatch(q)
			if !slices.Contains(access[fm[1]], fm[2]) {
				t.Errorf("%s: no access log check has %s = %s", where, fm[1], fm[2])
			}
		case policyName.MatchString(q) && strings.Contains(text, "polic"):
			if notChecked[name+"/"+q] != "" {
				continue
			}
			if !strings.Contains(logs, q) {
				t.Errorf("%s: no log check names the policy %s", where, q)
			}
		}
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		c    Call
		r    Result
		want bool
	}{
		{Call{Status: 200}, Result{Status: 200}, true},
		{Call{Status: 200}, Result{Status: 403}, false},
		{Call{Status: 403, Body: "RBAC: access denied"}, Result{Status: 403, Body: "RBAC: access denied"}, true},
		{Call{Status: 403, Body: "RBAC: access denied"}, Result{Status: 403, Body: "nope"}, false},
		{Call{Closed: true}, Result{Err: os.ErrClosed}, true},
		{Call{Closed: true}, Result{Err: os.ErrDeadlineExceeded}, false}, // a timeout is not a denial
		{Call{Closed: true}, Result{Status: 200}, false},
		{Call{Status: 200, Chain: []string{"a", "b"}}, Result{Status: 200, Body: `{"name":"a","upstream_calls":[{"code":200,"reply":{"name":"b"}}]}`}, true},
		{Call{Status: 200, Chain: []string{"a", "b"}}, Result{Status: 200, Body: `{"name":"a","upstream_calls":[{"code":0,"error":"reset"}]}`}, false},
	} {
		if got := check(tc.c, tc.r) == ""; got != tc.want {
			t.Errorf("check(%+v, %+v) = %q", tc.c, tc.r, check(tc.c, tc.r))
		}
	}
}

func TestAccessLogMatch(t *testing.T) {
	line := `{"response_code":403,"method":"POST","upstream_host":null,"response_code_details":"rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]"}`
	for _, tc := range []struct {
		want map[string]string
		ok   bool
	}{
		{map[string]string{"response_code": "403", "method": "POST", "upstream_host": ""}, true},
		{map[string]string{"response_code_details": "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]"}, true},
		{map[string]string{"upstream_cluster": ""}, true}, // absent
		{map[string]string{"method": "GET"}, false},
		{map[string]string{"response_code": "200"}, false},
	} {
		if got := accessLogMatch(line, tc.want); got != tc.ok {
			t.Errorf("accessLogMatch(%v) = %v", tc.want, got)
		}
	}
	if accessLogMatch(`{"upstream_host":"-"}`, map[string]string{"upstream_host": ""}) != true {
		t.Error(`"-" is an absent field`)
	}
}

func TestFindModuleRoot(t *testing.T) {
	root, err := FindModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "manifests", "examples", "handson", "README.md")); err != nil {
		t.Error(err)
	}
	if _, err := FindModuleRoot(t.TempDir()); err == nil {
		t.Error("found a module root in an empty folder")
	}
}

func TestSampleValidation(t *testing.T) {
	base := "name: x\nnodes: [a]\nwaypoint: ns/w\nsteps:\n- {readme: 1, waypoint: true, calls: [{from: ns/p, url: 'http://s/', status: 200, sample: %s}]}\n"
	for _, tc := range []struct {
		sample string
		ok     bool
	}{
		{"{requests: 40, parallel: 40, count: {response_flags: DI}, fraction: 0.5, atLeast: 2s}", true},
		{"{requests: 20}", true},
		{"{requests: 0}", false},
		{"{requests: 5000}", false},
		{"{requests: 10, parallel: 11}", false},
		{"{requests: 10, fraction: 0.5}", false},
		{"{requests: 10, count: {a: b}}", false},
		{"{requests: 10, count: {a: b}, fraction: 1.5}", false},
		{"{requests: 10, atLeast: 2s}", false},
	} {
		var sc Scenario
		err := yaml.UnmarshalStrict([]byte(strings.Replace(base, "%s", tc.sample, 1)), &sc)
		if err == nil {
			err = sc.validate()
		}
		if (err == nil) != tc.ok {
			t.Errorf("sample %s: %v, want ok=%v", tc.sample, err, tc.ok)
		}
	}
	var sc Scenario
	if err := yaml.UnmarshalStrict([]byte(strings.Replace(base, "%s", "{requests: 10, count: {a: b}, fraction: 0.5, atLeast: soon}", 1)), &sc); err == nil {
		t.Error("atLeast: soon was accepted")
	}
}

func TestBinomialBound(t *testing.T) {
	lo, hi := binomialBound(40, 0.5)
	if lo > 6 || lo < 5.5 || hi < 34 || hi > 34.5 {
		t.Errorf("bound(40, 0.5) = [%v, %v], want about [5.8, 34.2]", lo, hi)
	}
	if lo, hi := binomialBound(20, 1); lo != 20 || hi != 20 {
		t.Errorf("bound(20, 1) = [%v, %v], want exactly 20", lo, hi)
	}
}
