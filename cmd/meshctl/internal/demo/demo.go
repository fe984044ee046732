// Package demo plays the scenarios of manifests/examples on loopback with the real binaries (xdsserver, two ztunnels, the embedded waypoint) and checks every result the examples' READMEs describe.
package demo

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Options configure Run.
type Options struct {
	Root      string    // the module's folder; found from the current folder when empty
	Scenarios []string  // names (see Names); all when empty
	Out       io.Writer // what a user sees
	Keep      bool      // keep the work folder (logs, certificates, config) even when all passed
	Bins      *Binaries // already built binaries; built into the work folder when nil
	// GraphDir is where each scenario's traffic graph (HTML) is written after its steps:
	// <Root>/bin/demo-graphs when empty.
	GraphDir string
	// Started, when set, is called once a scenario's stack runs, with its metrics endpoints;
	// Played after its steps, before the stack stops (a test's Prometheus, for instance), with
	// a function that makes the last step's calls once more.
	Started func(scenario string, targets []Target)
	Played  func(scenario string, replay func(context.Context) error)
}

// Report is the outcome of one scenario.
type Report struct {
	Scenario string
	Checks   int
	Passed   int
	Failures []string
	Dir      string // work folder, kept when something failed
}

// OK says whether every check passed.
func (r Report) OK() bool { return len(r.Failures) == 0 && r.Passed == r.Checks }

// Run builds the binaries and plays each scenario. It returns one report per scenario played,
// and an error when it could not play them at all (build failure, unknown scenario).
func Run(ctx context.Context, o Options) ([]Report, error) {
	if o.Out == nil {
		o.Out = io.Discard
	}
	names := o.Scenarios
	if len(names) == 0 {
		names = Names()
	}
	var scs []*Scenario
	for _, n := range names {
		sc, err := Load(n)
		if err != nil {
			return nil, err
		}
		scs = append(scs, sc)
	}
	root := o.Root
	if root == "" {
		var err error
		if root, err = FindModuleRoot("."); err != nil {
			return nil, err
		}
	}
	work, err := os.MkdirTemp("", "meshctl-demo-")
	if err != nil {
		return nil, err
	}
	keep := o.Keep
	defer func() {
		switch {
		case !keep:
			os.RemoveAll(work)
		case !o.Keep:
			os.RemoveAll(filepath.Join(work, "bin")) // kept for a failure: the logs, not 150 MB of binaries
		}
	}()
	bins := o.Bins
	if bins == nil {
		fmt.Fprintf(o.Out, "building xdsserver, ztunnel, meshctl and waypoint (go build in %s) ...\n", root)
		start := time.Now()
		if bins, err = Build(root, filepath.Join(work, "bin")); err != nil {
			return nil, err
		}
		fmt.Fprintf(o.Out, "built in %.1fs\n", time.Since(start).Seconds())
		if e := bins.Err["waypoint"]; e != nil {
			fmt.Fprintf(o.Out, "embedded waypoint not available: %v\n", e)
		}
	}
	graphs := o.GraphDir
	if graphs == "" {
		graphs = filepath.Join(root, "bin", "demo-graphs")
	}
	var reports []Report
	for _, sc := range scs {
		r := play(ctx, sc, root, filepath.Join(work, sc.Name), bins, o, graphs)
		if !r.OK() {
			keep = true
		}
		reports = append(reports, r)
		if ctx.Err() != nil {
			break
		}
	}
	fmt.Fprintln(o.Out)
	for _, r := range reports {
		if r.OK() {
			fmt.Fprintf(o.Out, "%s: all %d checks passed\n", r.Scenario, r.Checks)
		} else {
			fmt.Fprintf(o.Out, "%s: FAILED, %d of %d checks passed; logs, certificates and config in %s\n", r.Scenario, r.Passed, r.Checks, r.Dir)
			for _, f := range r.Failures {
				fmt.Fprintf(o.Out, "  - %s\n", firstLines(f, 1))
			}
		}
	}
	if keep && o.Keep {
		fmt.Fprintf(o.Out, "work folder kept: %s\n", work)
	}
	return reports, ctx.Err()
}

// play runs one scenario: its own stack, started and stopped here.
func play(ctx context.Context, sc *Scenario, root, dir string, bins *Binaries, o Options, graphs string) Report {
	out := o.Out
	r := Report{Scenario: sc.Name, Checks: sc.Checks(), Dir: dir}
	w := func(format string, args ...any) { fmt.Fprintf(out, format, args...) }
	w("\n== %s: %s (manifests/examples/%s/README.md)\n", sc.Name, sc.Title, sc.Name)
	s, err := newStack(sc, root, dir, bins, out)
	if err != nil {
		r.Failures = append(r.Failures, err.Error())
		w("  ✗ %v\n", err)
		return r
	}
	defer s.stop()
	if err := s.start(ctx); err != nil {
		msg := "starting the stack: " + err.Error()
		r.Failures = append(r.Failures, msg)
		w("  ✗ %s\n", strings.ReplaceAll(msg, "\n", "\n    "))
		return r
	}
	if o.Started != nil {
		o.Started(sc.Name, s.targets())
	}
	p := &player{s: s, w: w}
	for i, st := range sc.Steps {
		if ctx.Err() != nil {
			p.failures = append(p.failures, "interrupted")
			break
		}
		p.step(ctx, i, st)
	}
	r.Passed, r.Failures = p.passed, p.failures
	w("\n  traffic graph (meshctl graph, from the ztunnels' and the waypoint's metrics):\n")
	if path, err := s.writeGraph(ctx, graphs); err != nil {
		w("  graph not written: %v\n", err)
	} else {
		w("  graph of %s written to %s\n", sc.Name, path)
	}
	if o.Played != nil {
		o.Played(sc.Name, s.replay)
	}
	return r
}
