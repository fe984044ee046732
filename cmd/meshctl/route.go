package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/source/files"
)

func init() { commands["route"] = runRoute }

func runRoute(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "lint" {
		return routeLint(args[1:], stdout, stderr)
	}
	fmt.Fprintln(stderr, "usage: meshctl route lint -f FILE|DIR ...")
	return 2
}

var routingKinds = []string{"VirtualService", "HTTPRoute", "DestinationRule"}

// routeLint builds the mesh of the files as xdsserver does and prints the routing objects'
// errors and remarks, then, for each Service a waypoint routes, the route sets in the order the
// waypoint tries them (an HTTPRoute and a VirtualService for the same Service: Istio's order,
// explained) and its DestinationRule. It exits 1 when a routing object is refused.
func routeLint(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("meshctl route lint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var paths listFlag
	fs.Var(&paths, "f", "file or folder of the mesh's YAML (repeatable; required)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if len(paths) == 0 {
		fmt.Fprintln(stderr, "meshctl route lint: -f is required")
		return 2
	}
	m, err := files.New(files.Options{Paths: paths, Model: model.DefaultConfig()}).Load()
	if err != nil {
		fmt.Fprintf(stderr, "meshctl route lint: %v\n", err)
		return 2
	}
	nerr, nwarn := 0, 0
	for _, e := range m.Errors {
		if routing(e) {
			nerr++
			fmt.Fprintf(stdout, "error: %v\n", e)
		}
	}
	for _, w := range m.Warnings {
		if routing(w) {
			nwarn++
			fmt.Fprintf(stdout, "warning: %v\n", w)
		}
	}
	r := m.Routing
	for _, s := range m.Services {
		sr := r.For(s)
		if sr == nil {
			continue
		}
		fmt.Fprintf(stdout, "Service %s (waypoint %s):\n", s.Key(), s.Waypoint.Key())
		for i, set := range sr.RouteSets {
			var rules []string
			for _, rule := range set.Rules {
				rules = append(rules, rule.Object+" "+rule.Field)
			}
			fmt.Fprintf(stdout, "  %d. %s %s/%s: %s\n", i+1, set.Kind, set.Namespace, set.Name, strings.Join(rules, ", "))
		}
		if len(sr.RouteSets) == 0 {
			fmt.Fprintln(stdout, "  no routes: every request goes to the Service (the default route)")
		}
		if dr := sr.DestinationRule; dr != nil {
			var subsets []string
			for _, ss := range dr.Spec.GetSubsets() {
				subsets = append(subsets, ss.GetName())
			}
			fmt.Fprintf(stdout, "  DestinationRule %s, subsets [%s]\n", dr.Key(), strings.Join(subsets, " "))
		}
	}
	fmt.Fprintf(stdout, "%d VirtualService, %d HTTPRoute and %d DestinationRule valid, %d errors, %d warnings\n",
		len(r.VirtualServices), len(r.HTTPRoutes), len(r.DestinationRules), nerr, nwarn)
	if nerr > 0 {
		return 1
	}
	return 0
}

func routing(err error) bool {
	var pe *policies.Error
	return errors.As(err, &pe) && slices.Contains(routingKinds, pe.Kind)
}
