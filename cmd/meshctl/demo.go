package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/goambient/goambient/cmd/meshctl/internal/demo"
)

func init() { commands["demo"] = runDemo }

const demoUsage = `usage:
  meshctl demo [--scenario handson|bookinfo-lite|demo-strict|traffic|jwt|all] [--keep] [--root DIR]
      build xdsserver, ztunnel and the embedded waypoint, start them with the demo apps on
      loopback (no root, no Docker), play the scenario of manifests/examples step by step as
      its README says, and check every result. Exit 0 only if every check passed.`

// runDemo is `meshctl demo`. Exit 0 all checks passed, 1 a check failed, 2 usage error.
func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("meshctl demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, demoUsage) }
	scenario := fs.String("scenario", "handson", "scenario to play: "+strings.Join(demo.Names(), ", ")+", or all")
	keep := fs.Bool("keep", false, "keep the work folder (logs, certificates, config) after a successful run")
	root := fs.String("root", "", "the repository's folder (default: found from the current folder)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "meshctl demo: unexpected argument %q\n%s\n", fs.Arg(0), demoUsage)
		return 2
	}
	var names []string
	for _, n := range strings.Split(*scenario, ",") {
		if n == "all" {
			names = append(names, demo.Names()...)
			continue
		}
		if _, err := demo.Load(n); err != nil {
			fmt.Fprintf(stderr, "meshctl demo: %v\n", err)
			return 2
		}
		names = append(names, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reports, err := demo.Run(ctx, demo.Options{Root: *root, Scenarios: names, Out: stdout, Keep: *keep})
	if err != nil {
		fmt.Fprintf(stderr, "meshctl demo: %v\n", err)
		return 1
	}
	for _, r := range reports {
		if !r.OK() {
			return 1
		}
	}
	return 0
}
