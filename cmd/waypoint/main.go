// Command waypoint is the embedded waypoint for machines without Envoy (filters/embedded), and with a router~ node id the embedded ingress gateway (filters/embedded/gateway): it terminates HBONE, routes each HTTP request with the RDS, CDS and EDS xdsserver sends, runs the goambient.authz Envoy Go filter and the fault filter on it through the production host adapter, and proxies it over HBONE.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/filters/embedded/app"
	"github.com/goambient/goambient/ztunnel/identity"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	xdsAddr := fs.String("xds-address", "127.0.0.1:15010", "xdsserver's plaintext ADS address, host:port")
	nodeID := fs.String("node-id", "", "Envoy node id: waypoint~<podIP>~<pod>.<namespace>~<namespace>.svc.cluster.local (required); router~... runs an ingress gateway")
	listen := fs.String("listen", "", "HBONE listener, <podIP>:15008 (default: the node id's IP, port 15008)")
	svidDir := fs.String("svid-dir", "", "`folder` of SVIDs, as meshctl certs issue writes it (this or --ca-address)")
	caAddr := fs.String("ca-address", "", "the control plane's CA, host:port (its TLS 15012): SVIDs by Istio's CreateCertificate (this or --svid-dir)")
	caRoot := fs.String("ca-root", "", "with --ca-address: PEM root that verifies the CA (required with it)")
	caToken := fs.String("ca-token-file", "", "with --ca-address: bearer token file (a projected istio-ca token), read on each request")
	readyListen := fs.String("ready-listen", "", "listener for /healthz/ready (200 once the filter config and routes arrived); empty: none")
	metricsListen := fs.String("metrics-listen", "", "Prometheus listener for /stats/prometheus (Istio's request metrics, reporter=waypoint), e.g. <podIP>:15020; empty: none")
	accessLog := fs.String("access-log", "-", "access log file (JSON lines, Envoy's field names); - for stdout")
	td := fs.String("trust-domain", "cluster.local", "trust domain of the mesh")
	sa := fs.String("service-account", "", "the waypoint's service account when the workload API does not name it (default: the pod name)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	xdsRoot := fs.String("xds-root", "", "ingress gateway (router~ node id) only: PEM root verifying the control plane's TLS listener; --xds-address is then that listener (its TLS certificates are served only there)")
	xdsToken := fs.String("xds-token-file", "", "ingress gateway only, with --xds-root: bearer token file authenticating the Gateway")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintln(stderr, "waypoint: --log-level:", err)
		return 2
	}
	if *nodeID == "" || (*svidDir == "") == (*caAddr == "") || (*caAddr != "") != (*caRoot != "") {
		fmt.Fprintln(stderr, "waypoint: --node-id, and exactly one of --svid-dir and --ca-address (with --ca-root), are required")
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if *listen == "" {
		*listen = defaultListen(*nodeID)
	}
	var al io.Writer = stdout
	if *accessLog != "-" {
		f, err := os.OpenFile(*accessLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			log.Error("access log", "error", err.Error())
			return 1
		}
		defer f.Close()
		al = f
	}
	if strings.HasPrefix(*nodeID, "router~") { // an ingress Gateway (class istio): gateway.go
		return runGateway(gatewayFlags{xdsAddr: *xdsAddr, nodeID: *nodeID, svidDir: *svidDir, caAddr: *caAddr, caRoot: *caRoot,
			caToken: *caToken, readyListen: *readyListen, td: *td, sa: *sa, xdsRoot: *xdsRoot, xdsToken: *xdsToken}, al, log, stderr)
	}
	if *xdsRoot != "" || *xdsToken != "" {
		fmt.Fprintln(stderr, "waypoint: --xds-root and --xds-token-file are for an ingress gateway (a router~ node id)")
		return 2
	}
	h, err := app.AuthzHost(log.With("scope", "authz"))
	if err != nil {
		log.Error("authz filter", "error", err.Error())
		return 1
	}
	var ids identity.Source
	if *caAddr != "" {
		tdID, err := spiffeid.TrustDomainFromString(*td)
		if err != nil {
			fmt.Fprintln(stderr, "waypoint: --trust-domain:", err)
			return 2
		}
		g, err := identity.NewGRPCSource(identity.GRPCSourceOptions{Address: *caAddr, RootFile: *caRoot, TokenFile: *caToken, TrustDomain: tdID})
		if err != nil {
			log.Error("CA", "error", err.Error())
			return 1
		}
		defer g.Close()
		ids = g
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	a, err := app.Start(ctx, app.Options{
		XDSAddress: *xdsAddr, NodeID: *nodeID, Listen: *listen, ReadyListen: *readyListen, MetricsListen: *metricsListen, SVIDDir: *svidDir, Identity: ids,
		TrustDomain: *td, ServiceAccount: *sa, AccessLog: al, Logger: log,
		Host: h,
	})
	if err != nil {
		log.Error("cannot start", "error", err.Error())
		return 1
	}
	<-ctx.Done()
	log.Info("stopping")
	a.Stop()
	log.Info("stopped")
	return 0
}
