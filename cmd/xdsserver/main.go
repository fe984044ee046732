// Command xdsserver is the control plane: it reads the mesh from folders of YAML (or a Kubernetes cluster) and serves Istio's workload API to ztunnels and Envoy xDS to waypoints over plaintext ADS, with readiness and metrics on a separate HTTP port.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/server"
	"github.com/goambient/goambient/xdsserver/source/files"
	"github.com/goambient/goambient/xdsserver/wds"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("xdsserver", flag.ContinueOnError)
	var dirs multi
	fs.Var(&dirs, "config-dir", "folder (read recursively) or file of mesh YAML (repeatable; required)")
	loopback := fs.Bool("loopback", false, "place pods and VIPs without addresses on loopback (127.10.0.0/16, 127.96.0.0/16) for local runs")
	podCIDR := fs.String("pod-cidr", "", "the range pods without status.podIP (waypoints included) are placed in, instead of 127.10.0.0/16 with --loopback or 10.244.0.0/16")
	xdsListen := fs.String("xds-listen", "127.0.0.1:15010", "plaintext gRPC ADS listener, unauthenticated like istiod's 15010: keep it on loopback or a private network; empty: none (with --ca-dir)")
	httpListen := fs.String("http-listen", "127.0.0.1:15014", "HTTP listener for /healthz/ready and /metrics")
	interval := fs.Duration("interval", files.DefaultInterval, "how often the config folders are looked at")
	waypointHostname := fs.Bool("waypoint-hostname", false, "refer to waypoints by hostname instead of VIP (default: on with --kubeconfig/--kube, as istiod does; off with --config-dir)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	secureListen := fs.String("secure-listen", "127.0.0.1:15012", "TLS gRPC listener: the CA, and ADS with the waypoints' SDS secrets for authenticated waypoints (on when --ca-dir is set)")
	caDir := fs.String("ca-dir", "", "folder of the CA root (root-cert.pem, root-key.pem), created on first start; turns on --secure-listen (with --kubeconfig/--kube it is on without it: the CA is the Secret istio-system/cacerts, else istio-system/istio-ca-secret, generated at first start, as istiod's)")
	bootstrapTokens := fs.String("bootstrap-tokens", "", "file of bootstrap tokens accepted by the CA (format in xdsserver/ca/README.md)")
	kubeconfig := fs.String("kubeconfig", "", "read the mesh from the Kubernetes cluster of this kubeconfig file instead of --config-dir")
	inCluster := fs.Bool("kube", false, "read the mesh from the Kubernetes cluster this runs in (service account), instead of --config-dir")
	noStatus := fs.Bool("no-status", false, "with --kubeconfig/--kube: do not write status conditions on AuthorizationPolicies nor on Gateways")
	maxFileSize := fs.Int64("max-config-file-size", files.DefaultMaxFileSize, "largest configuration file read, in bytes; a larger one is reported and skipped")
	meshConfigFile := fs.String("mesh-config", "", "a mesh config file (istiod's --meshConfig: extensionProviders for CUSTOM policies), read with the config folders; in a cluster the istio ConfigMap is read instead")
	limits := limitFlags(fs)
	var deploy deployFlags
	fs.BoolVar(&deploy.off, "no-gateway-deploy", false, "with --kubeconfig/--kube: do not deploy Gateways nor create the GatewayClasses istio and istio-waypoint")
	fs.StringVar(&deploy.proxy, "waypoint-proxy", "envoy", "what deployed waypoints run unless their parameters say otherwise: envoy, or go (the embedded Go waypoint)")
	fs.StringVar(&deploy.goImage, "waypoint-image", "goambient/waypoint:dev", "image of the embedded Go waypoint (--waypoint-proxy=go)")
	fs.StringVar(&deploy.envoyImage, "waypoint-envoy-image", "goambient/waypoint-envoy:dev", "image of the Envoy waypoint (Envoy contrib with filters.so)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if (len(dirs) == 0) == (*kubeconfig == "" && !*inCluster) {
		fmt.Fprintln(os.Stderr, "xdsserver: give either --config-dir, or --kubeconfig or --kube")
		return 2
	}
	if *xdsListen == "" && *caDir == "" {
		fmt.Fprintln(os.Stderr, "xdsserver: without --xds-listen, --ca-dir is required (the TLS listener is then the only one)")
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "xdsserver: --log-level:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	configErrors := prometheus.NewGauge(prometheus.GaugeOpts{Name: "goambient_config_errors", Help: "Objects left out of the mesh because they are invalid."})
	configWarnings := prometheus.NewGauge(prometheus.GaugeOpts{Name: "goambient_config_warnings", Help: "Remarks on objects kept in the mesh."})
	meshPushes := prometheus.NewCounter(prometheus.CounterOpts{Name: "goambient_mesh_updates_total", Help: "Meshes built from the configuration and translated."})
	reg.MustRegister(configErrors, configWarnings, meshPushes)

	srv, err := server.New(server.Options{Logger: log.With("scope", "xds"), Registerer: reg, Limits: limits()})
	if err != nil {
		log.Error("xds server", "error", err.Error())
		return 1
	}
	cfg := model.DefaultConfig()
	if *loopback {
		cfg.Placement = model.LoopbackPlacement
	}
	if *podCIDR != "" {
		p, err := netip.ParsePrefix(*podCIDR)
		if err != nil {
			log.Error("--pod-cidr", "error", err.Error())
			return 1
		}
		cfg.Placement.PodCIDR = p.Masked()
	}
	if err := cfg.WithDefaults().Validate(); err != nil {
		log.Error("model configuration", "error", err.Error())
		return 1
	}
	src, kc, err := pickSource(files.New(files.Options{Paths: dirs, Interval: *interval, Model: cfg, MaxFileSize: *maxFileSize, MeshConfig: *meshConfigFile, Logger: log.With("scope", "files")}),
		*kubeconfig, *inCluster, *noStatus, cfg, log.With("scope", "kube"))
	if err != nil {
		log.Error("kubernetes source", "error", err.Error())
		return 1
	}
	topts := wds.Options{WaypointHostname: waypointByHostname(fs, *waypointHostname, kc != nil)}
	waypoints := newWaypointPusher(log.With("scope", "waypoints"), srv)

	var xl net.Listener
	if *xdsListen != "" {
		if xl, err = net.Listen("tcp", *xdsListen); err != nil {
			log.Error("xds listener", "error", err.Error())
			return 1
		}
	}
	hl, err := net.Listen("tcp", *httpListen)
	if err != nil {
		log.Error("http listener", "error", err.Error())
		return 1
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !srv.Ready() {
			http.Error(w, "no mesh yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	var sec *secure
	if *caDir != "" || kc != nil {
		if sec, err = startSecure(log.With("scope", "ca"), reg, srv, *secureListen, *caDir, *bootstrapTokens, kc, cfg.TrustDomain); err != nil {
			log.Error("secure listener", "error", err.Error())
			return 1
		}
		defer sec.stop()
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	errc := make(chan error, 6)
	xdsAddr := ""
	if xl != nil {
		xdsAddr = xl.Addr().String()
		go func() { errc <- srv.Serve(xl) }()
	}
	if sec != nil {
		go func() { errc <- sec.serve() }()
		if kc != nil { // istiod's namespace controller: the root in every namespace
			go func() { errc <- publishRoot(ctx, log.With("scope", "rootcm"), kc, sec.rootPEM) }()
		}
	}
	if kc != nil && !deploy.off { // istiod's Gateway deployment and GatewayClass controllers
		go func() {
			errc <- deployGateways(ctx, log.With("scope", "gatewaydeploy"), *kubeconfig, kc, deploy, *noStatus, cfg.TrustDomain)
		}()
	}
	go func() {
		if err := hs.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}()
	go func() {
		errc <- src.Run(ctx, func(m *model.Mesh) {
			for _, e := range m.Errors {
				log.Warn("config error (object left out)", "error", e.Error())
			}
			for _, w := range m.Warnings {
				log.Info("config warning", "warning", w.Error())
			}
			configErrors.Set(float64(len(m.Errors)))
			configWarnings.Set(float64(len(m.Warnings)))
			if sec != nil {
				sec.mesh.Set(m) // before the ztunnels see the workloads they will ask certificates for
			}
			r := wds.Translate(m, topts)
			for _, w := range r.Warnings {
				log.Info("translation warning", "warning", w.Error())
			}
			srv.SetResources(r)
			waypoints.push(m)
			meshPushes.Inc()
			log.Info("mesh pushed", "addresses", len(r.Addresses), "authorizations", len(r.Authorizations), "errors", len(m.Errors))
		})
	}()
	secAddr := ""
	if sec != nil {
		secAddr = sec.ln.Addr().String()
	}
	from := "config:" + strings.Join(dirs, ",")
	switch {
	case *kubeconfig != "":
		from = "kubeconfig:" + *kubeconfig
	case *inCluster:
		from = "in-cluster"
	}
	log.Info("xdsserver started", "xds", xdsAddr, "http", hl.Addr().String(), "source", from, "loopback", *loopback, "secure", secAddr)

	code := 0
	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil {
			log.Error("stopped", "error", err.Error())
			code = 1
		}
	}
	stop()
	srv.Stop()
	shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = hs.Shutdown(shut)
	log.Info("stopped")
	return code
}

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }
