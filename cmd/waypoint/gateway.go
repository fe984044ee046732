package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"

	"github.com/goambient/goambient/filters/embedded/gateway"
	"github.com/goambient/goambient/ztunnel/identity"
	"github.com/goambient/goambient/ztunnel/xds"
)

type gatewayFlags struct {
	xdsAddr, nodeID, svidDir, caAddr, caRoot, caToken, readyListen, td, sa string
	xdsRoot, xdsToken                                                      string
}

// runGateway runs the embedded ingress gateway: its listeners on the node id's IP (each xDS
// listener's port), its identity the pod's service account.
func runGateway(f gatewayFlags, al io.Writer, log *slog.Logger, stderr io.Writer) int {
	td, err := spiffeid.TrustDomainFromString(f.td)
	if err != nil {
		fmt.Fprintln(stderr, "waypoint: --trust-domain:", err)
		return 2
	}
	pod, _, err := gateway.ParseNodeID(f.nodeID)
	if err != nil {
		fmt.Fprintln(stderr, "waypoint:", err)
		return 2
	}
	var ids identity.Source = identity.NewDirSource(f.svidDir, td)
	if f.caAddr != "" {
		g, err := identity.NewGRPCSource(identity.GRPCSourceOptions{Address: f.caAddr, RootFile: f.caRoot, TokenFile: f.caToken, TrustDomain: td})
		if err != nil {
			log.Error("CA", "error", err.Error())
			return 1
		}
		defer g.Close()
		ids = g
	}
	if f.xdsToken != "" && f.xdsRoot == "" {
		fmt.Fprintln(stderr, "waypoint: --xds-token-file needs --xds-root (a token never goes in clear)")
		return 2
	}
	var creds credentials.TransportCredentials
	if f.xdsRoot != "" {
		if creds, err = xds.TLSCredentials(f.xdsRoot, ""); err != nil {
			fmt.Fprintln(stderr, "waypoint: --xds-root:", err)
			return 2
		}
	}
	ip := strings.Split(f.nodeID, "~")[1]
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	g, err := gateway.Start(ctx, gateway.Options{
		XDSAddress: f.xdsAddr, XDSCredentials: creds, XDSTokenFile: f.xdsToken, NodeID: f.nodeID, Identity: ids, TrustDomain: f.td, ServiceAccount: cmpOr(f.sa, pod),
		AccessLog: al, Logger: log,
		ListenAddress: func(port uint32) string { return net.JoinHostPort(ip, strconv.FormatUint(uint64(port), 10)) },
	})
	if err != nil {
		log.Error("cannot start", "error", err.Error())
		return 1
	}
	if f.readyListen != "" {
		ln, err := net.Listen("tcp", f.readyListen)
		if err != nil {
			log.Error("ready listener", "error", err.Error())
			g.Stop()
			return 1
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
			if !g.Store().Ready() {
				http.Error(w, "no listeners and routes yet", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ready")
		})
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(ln)
		defer hs.Close()
	}
	<-ctx.Done()
	log.Info("stopping")
	g.Stop()
	log.Info("stopped")
	return 0
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
