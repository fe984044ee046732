package demo

import (
	"embed"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

//go:embed scenarios/*.yaml
var scenarioFS embed.FS

// Scenario is one example of manifests/examples/<Name>, as the demo plays it: the nodes (one
// ztunnel each), the apps to run, the waypoint Gateway (if any) and the steps. The example's
// README is the source of truth; scenarios/<name>.yaml says how to check it.
type Scenario struct {
	Name     string   `json:"name"`
	Title    string   `json:"title"`
	Nodes    []string `json:"nodes"`
	Apps     []App    `json:"apps"`
	Waypoint string   `json:"waypoint,omitempty"` // Gateway "ns/name" run by the embedded waypoint
	Gateway  string   `json:"gateway,omitempty"`  // ingress Gateway "ns/name" run by the embedded gateway (gateway.go)
	Steps    []Step   `json:"steps"`
}

// App is a demo application on a pod's private address.
type App struct {
	Pod      string `json:"pod"`                // "ns/name"
	Kind     string `json:"kind"`               // echo, chain or httpbin
	Upstream string `json:"upstream,omitempty"` // chain: the URL it calls (through its ztunnel)
}

// Step is one change of configuration and what must be seen after it.
type Step struct {
	Readme   int      `json:"readme"` // the README's step number
	Title    string   `json:"title"`
	Apply    []string `json:"apply,omitempty"`  // files of the example copied into the config folder
	Delete   []string `json:"delete,omitempty"` // files removed from it
	Patch    *Patch   `json:"patch,omitempty"`  // a file applied with one edit
	Waypoint bool     `json:"waypoint,omitempty"`
	Gateway  bool     `json:"gateway,omitempty"` // start the ingress gateway after this step's changes
	Calls    []Call   `json:"calls"`
	Logs     []Log    `json:"logs,omitempty"`
}

// Patch applies File with Replace replaced by With (a `kubectl patch`).
type Patch struct {
	File    string `json:"file"`
	Replace string `json:"replace"`
	With    string `json:"with"`
}

// Call is one curl from a pod, and what it must get.
type Call struct {
	From      string   `json:"from"` // "ns/pod", or "outside": a client outside the mesh to the gateway (gateway.go)
	Method    string   `json:"method,omitempty"`
	Data      string   `json:"data,omitempty"`
	URL       string   `json:"url"`
	Plaintext bool     `json:"plaintext,omitempty"` // a pod outside the mesh: straight to the pod, no ztunnel
	Status    int      `json:"status,omitempty"`
	Closed    bool     `json:"closed,omitempty"` // no HTTP response (curl 000)
	Body      string   `json:"body,omitempty"`   // a substring of the body
	Chain     []string `json:"chain,omitempty"`  // demo app names along the call chain, each hop 200
	// AccessLog are fields of the waypoint's access-log line for this request (found by its
	// x-request-id; "" = absent): the call is retried until they match, like its status.
	AccessLog map[string]string `json:"accesslog,omitempty"`
	// Sample, once the call matched, repeats it and counts (see Sample).
	Sample *Sample `json:"sample,omitempty"`
}

// Sample sends a call N (requests) times, Parallel at a time, each with the call's status, and counts
// the requests whose waypoint access-log line has the Count fields: the count must be within
// a binomial bound of Fraction·N, and each counted request must have taken at least AtLeast.
// Without Count, every request must only get the call's status.
type Sample struct {
	N        int               `json:"requests"`           // "n" would be YAML 1.1's false
	Parallel int               `json:"parallel,omitempty"` // 1 when 0
	Count    map[string]string `json:"count,omitempty"`
	Fraction float64           `json:"fraction,omitempty"`
	AtLeast  Duration          `json:"atLeast,omitempty"`
}

// Duration is a time.Duration written as Go writes it ("2s", "150ms").
type Duration struct{ time.Duration }

// UnmarshalJSON reads "2s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes "2s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// Log is a line some component must have written, or a probe.
type Log struct {
	Ztunnel   string            `json:"ztunnel,omitempty"`   // node whose ztunnel logged it
	All       []string          `json:"all,omitempty"`       // substrings of one line
	AccessLog map[string]string `json:"accesslog,omitempty"` // the waypoint's JSON access log: field → value ("" = absent)
	TLS       *TLSProbe         `json:"tls,omitempty"`
}

// TLSProbe checks that an address speaks TLS 1.3 with a SPIFFE identity, and no plaintext HTTP.
type TLSProbe struct {
	To       string `json:"to"`
	Identity string `json:"identity"`
}

// Names lists the scenarios, sorted.
func Names() []string {
	ents, _ := scenarioFS.ReadDir("scenarios")
	var out []string
	for _, e := range ents {
		out = append(out, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	slices.Sort(out)
	return out
}

// Load returns the named scenario.
func Load(name string) (*Scenario, error) {
	b, err := scenarioFS.ReadFile(path.Join("scenarios", name+".yaml"))
	if err != nil {
		return nil, fmt.Errorf("unknown scenario %q (have %s)", name, strings.Join(Names(), ", "))
	}
	var s Scenario
	if err := yaml.UnmarshalStrict(b, &s); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", name, err)
	}
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", name, err)
	}
	return &s, nil
}

func (s *Scenario) validate() error {
	if len(s.Nodes) == 0 || len(s.Steps) == 0 {
		return fmt.Errorf("needs nodes and steps")
	}
	for i, st := range s.Steps {
		for j, c := range st.Calls {
			if (c.Status == 0) == !c.Closed {
				return fmt.Errorf("steps[%d].calls[%d]: exactly one of status and closed", i, j)
			}
			if (c.AccessLog != nil || c.Sample != nil) && !st.Waypoint && !s.waypointBefore(i) {
				return fmt.Errorf("steps[%d].calls[%d]: accesslog and sample need the waypoint, started in this step or before", i, j)
			}
			if sm := c.Sample; sm != nil {
				switch {
				case sm.N < 1 || sm.N > 1000:
					return fmt.Errorf("steps[%d].calls[%d].sample.requests: %d is not in 1..1000", i, j, sm.N)
				case sm.Parallel < 0 || sm.Parallel > sm.N:
					return fmt.Errorf("steps[%d].calls[%d].sample.parallel: %d is not in 0..requests", i, j, sm.Parallel)
				case (sm.Count == nil) != (sm.Fraction == 0):
					return fmt.Errorf("steps[%d].calls[%d].sample: count and fraction go together", i, j)
				case sm.Fraction < 0 || sm.Fraction > 1:
					return fmt.Errorf("steps[%d].calls[%d].sample.fraction: %v is not in 0..1", i, j, sm.Fraction)
				case sm.AtLeast.Duration != 0 && sm.Count == nil:
					return fmt.Errorf("steps[%d].calls[%d].sample.atLeast: needs count", i, j)
				}
			}
		}
		for j, l := range st.Logs {
			n := 0
			if l.Ztunnel != "" {
				n++
				if !slices.Contains(s.Nodes, l.Ztunnel) {
					return fmt.Errorf("steps[%d].logs[%d]: unknown node %q", i, j, l.Ztunnel)
				}
			}
			if l.AccessLog != nil {
				n++
			}
			if l.TLS != nil {
				n++
			}
			if n != 1 {
				return fmt.Errorf("steps[%d].logs[%d]: exactly one of ztunnel, accesslog and tls", i, j)
			}
		}
		if st.Gateway && s.Gateway == "" {
			return fmt.Errorf("steps[%d]: starts a gateway but the scenario names none", i)
		}
		for j, c := range st.Calls {
			if c.From == outside && !st.Gateway && !slices.ContainsFunc(s.Steps[:i], func(st Step) bool { return st.Gateway }) {
				return fmt.Errorf("steps[%d].calls[%d]: a call from outside needs the gateway, started in this step or before", i, j)
			}
		}
		if st.Waypoint && s.Waypoint == "" {
			return fmt.Errorf("steps[%d]: needs a waypoint but the scenario names none", i)
		}
	}
	return nil
}

// waypointBefore says whether a step before step i starts the waypoint.
func (s *Scenario) waypointBefore(i int) bool {
	return slices.ContainsFunc(s.Steps[:i], func(st Step) bool { return st.Waypoint })
}

// Checks is the number of results a run compares: calls and log lines.
func (s *Scenario) Checks() int {
	n := 0
	for _, st := range s.Steps {
		n += len(st.Calls) + len(st.Logs)
	}
	return n
}

// Files lists every file of the example the scenario applies or patches.
func (s *Scenario) Files() []string {
	var out []string
	for _, st := range s.Steps {
		out = append(out, st.Apply...)
		if st.Patch != nil {
			out = append(out, st.Patch.File)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
