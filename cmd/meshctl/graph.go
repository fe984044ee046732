package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/goambient/goambient/internal/meshgraph"
)

func init() { commands["graph"] = runGraph }

const graphUsage = `usage:
  meshctl graph --prometheus URL --namespace NS[,NS...] [--window 10m] [--html FILE]
      the traffic graph from Kiali's graph queries (` + meshgraph.KialiSource + `)
  meshctl graph --scrape URL[,URL...] [--html FILE]
      the same graph straight from the components' /stats/prometheus (ztunnels, waypoints):
      totals since they started, no Prometheus needed
  Prints a table (source, destination, protocol, rate, errors, response codes, mTLS); --html
  also writes a page a browser draws.`

// runGraph is `meshctl graph`. Exit 0, 1 on a failure to read the metrics, 2 usage error.
func runGraph(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("meshctl graph", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, graphUsage) }
	prom := fs.String("prometheus", "", "Prometheus base URL, e.g. http://127.0.0.1:9090")
	nss := fs.String("namespace", "", "namespaces of the graph (with --prometheus)")
	window := fs.Duration("window", 10*time.Minute, "the rates' window (with --prometheus)")
	scrape := fs.String("scrape", "", "metrics URLs to read directly, comma-separated")
	out := fs.String("html", "", "also write the graph as an HTML page to this file")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 || (*prom == "") == (*scrape == "") || (*prom != "" && *nss == "") {
		fmt.Fprintln(stderr, graphUsage)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := &http.Client{Timeout: 30 * time.Second}
	var g *meshgraph.Graph
	var err error
	title := "mesh graph"
	if *prom != "" {
		g, _, err = meshgraph.FromPrometheus(ctx, c, strings.TrimRight(*prom, "/"), strings.Split(*nss, ","), *window, time.Now())
		title = fmt.Sprintf("mesh graph of %s (Prometheus, %s)", *nss, window)
	} else {
		g, err = meshgraph.FromEndpoints(ctx, c, strings.Split(*scrape, ","))
		title = "mesh graph (components' metrics)"
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshctl graph: %v\n", err)
		return 1
	}
	g.WriteTable(stdout)
	if *out != "" {
		var b bytes.Buffer
		if err := g.WriteHTML(&b, title); err == nil {
			err = os.WriteFile(*out, b.Bytes(), 0o644)
		}
		if err != nil {
			fmt.Fprintf(stderr, "meshctl graph: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "graph written to %s\n", *out)
	}
	return 0
}
