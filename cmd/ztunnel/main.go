// Command ztunnel is the node proxy of the mesh: it reads the workload state from a file or the control plane (delta ADS), the SVIDs from a folder, and serves HBONE, SOCKS5 and the admin endpoints (see ztunnel/proxy).
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/goambient/goambient/ztunnel/accesslog"
	"github.com/goambient/goambient/ztunnel/dnsproxy"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/identity"
	"github.com/goambient/goambient/ztunnel/proxy"
	"github.com/goambient/goambient/ztunnel/state"
	"github.com/goambient/goambient/ztunnel/xds"
	"github.com/goambient/goambient/ztunnel/zds"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	node := fs.String("node", os.Getenv("NODE_NAME"), "node name: workloads with this node are served here (required)")
	configFile := fs.String("config-file", "", "workload state file (istio.workload resources as YAML/JSON), watched (this or --xds-address)")
	xdsAddr := fs.String("xds-address", "", "control plane delta ADS address, host:port, plaintext unless --xds-root (this or --config-file)")
	xdsRoot := fs.String("xds-root", "", "with --xds-address: PEM root that verifies the control plane, turning TLS on (its 15012; the same file as --ca-root)")
	xdsServerName := fs.String("xds-server-name", xds.DefaultServerName, "with --xds-root: name verified in the control plane's serving certificate")
	xdsToken := fs.String("xds-token-file", "", "with --xds-root: bearer token file, read again on each stream (the same file as --ca-token-file)")
	svidDir := fs.String("svid-dir", "", "SVID folder written by `meshctl certs` (this or --ca-address)")
	caAddr := fs.String("ca-address", "", "control plane CA, host:port (its TLS 15012): SVIDs by Istio's CreateCertificate (this or --svid-dir)")
	caRoot := fs.String("ca-root", "", "with --ca-address: PEM root that verifies the CA (required with it)")
	caToken := fs.String("ca-token-file", "", "with --ca-address: bearer token file, read on each request")
	td := fs.String("trust-domain", "cluster.local", "trust domain of workloads that name none")
	clusterID := fs.String("cluster-id", cmp.Or(os.Getenv("CLUSTER_ID"), xds.DefaultClusterID), "cluster this node is in: the CA's and the xDS stream's clusterid metadata, the node's CLUSTER_ID (as Istio's ztunnel)")
	loopback := fs.Bool("loopback", false, "loopback mode: pods are 127.x addresses, listeners per pod IP, apps on private addresses")
	appOffset := fs.Uint("app-offset", proxy.DefaultAppOffset, "loopback: the app of pod a.b.c.d:p listens on a.(b+offset mod 256).c.d:p")
	var apps appMap
	fs.Var(&apps, "app", "loopback: explicit app address `podIP:port=appIP:port` (repeatable; wins over --app-offset)")
	var podNS podNetns
	fs.Var(&podNS, "pod-netns", "namespace mode (Linux): the pod `podIP=/var/run/netns/NAME` is that network namespace; its 15001/15006/15008 listeners open inside it (repeatable)")
	zdsSocket := fs.String("zds-socket", "", "namespace mode (Linux) fed by istio-cni's node agent: its ZDS unix socket (e.g. "+zds.DefaultSocket+"); pods come and go at run time (excludes --loopback and --pod-netns)")
	hboneAddr := fs.String("inbound-hbone", "[::]:15008", "inbound HBONE listener (not in loopback mode)")
	plainAddr := fs.String("inbound-plaintext", "[::]:15006", "inbound plaintext listener, iptables-redirected (not in loopback mode)")
	outAddr := fs.String("outbound", "[::]:15001", "outbound capture listener, iptables-redirected (\"\" to turn off; default off in loopback mode)")
	socksAddr := fs.String("socks5", "127.0.0.1:15080", "SOCKS5 listener (\"\" to turn off)")
	metricsAddr := fs.String("metrics", "[::]:15020", "Prometheus listener (/metrics, /stats/prometheus)")
	readyAddr := fs.String("readiness", "[::]:15021", "readiness listener (/healthz/ready)")
	adminAddr := fs.String("admin", "127.0.0.1:15000", "admin listener (/config_dump, /debug/pprof/)")
	dnsAddr := fs.String("dns-proxy", "", "DNS proxy listener, UDP and TCP (e.g. 127.0.0.1:15053; \"\" turns it off): answers mesh services and ServiceEntry hosts, forwards the rest to --resolv-conf's nameservers")
	dnsCapture := fs.Bool("dns-capture", false, "namespace mode: serve the DNS proxy inside each pod on 127.0.0.1:15053, where istio-cni's DNS capture (ztunnel/netns.DNSRules) sends the pod's port 53")
	resolvConf := fs.String("resolv-conf", "/etc/resolv.conf", "the node's resolvers: where the DNS proxy forwards and hostname workloads (ServiceEntry resolution DNS) are resolved")
	var hboneLimits hbone.ServerConfig
	fs.IntVar(&hboneLimits.MaxConnections, "hbone-max-connections", 0, "inbound HBONE: most connections served at once, more are closed when accepted (0: half the open-file limit, at most 65536)")
	fs.IntVar(&hboneLimits.MaxConnectionsPerSource, "hbone-max-connections-per-source", 0, "inbound HBONE: the same per client IP (0: a quarter of the total, at most 1024)")
	fs.IntVar(&hboneLimits.MaxHandshakes, "hbone-max-handshakes", 0, "inbound HBONE: most TLS handshakes in progress (0: 256)")
	fs.IntVar(&hboneLimits.MaxHandshakesPerSource, "hbone-max-handshakes-per-source", 0, "inbound HBONE: the same per client IP (0: 32)")
	fs.DurationVar(&hboneLimits.IdleTimeout, "hbone-idle-timeout", 0, "inbound HBONE: a connection without streams this long is closed (0: 10m)")
	baggage := fs.Bool("baggage", true, "send the workload's baggage on outbound CONNECTs and in inbound answers, and read the peer's into the metrics' labels (as Istio's ztunnel; false: for measuring its cost)")
	grace := fs.Duration("drain-grace", 5*time.Second, "on SIGTERM, how long open connections get before they are closed")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *node == "" || (*svidDir == "") == (*caAddr == "") || (*configFile == "") == (*xdsAddr == "") || (*caAddr != "" && *caRoot == "") {
		fmt.Fprintln(os.Stderr, "ztunnel: --node, exactly one of --svid-dir and --ca-address (with --ca-root), and exactly one of --config-file and --xds-address are required")
		return 2
	}
	if (*xdsRoot != "" && *xdsAddr == "") || (*xdsToken != "" && *xdsRoot == "") {
		fmt.Fprintln(os.Stderr, "ztunnel: --xds-root needs --xds-address, and --xds-token-file needs --xds-root")
		return 2
	}
	if *zdsSocket != "" && (*loopback || len(podNS) > 0) {
		fmt.Fprintln(os.Stderr, "ztunnel: --zds-socket excludes --loopback and --pod-netns: with it the istio-cni node agent gives the pods")
		return 2
	}
	outSet := false
	fs.Visit(func(f *flag.Flag) { outSet = outSet || f.Name == "outbound" })
	if *loopback && !outSet {
		*outAddr = ""
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel: --log-level:", err)
		return 2
	}
	format := accesslog.Text
	switch *logFormat {
	case "text":
	case "json":
		format = accesslog.JSON
	default:
		fmt.Fprintln(os.Stderr, "ztunnel: --log-format must be text or json")
		return 2
	}
	log := slog.New(accesslog.NewHandler(os.Stdout, &accesslog.HandlerOptions{Format: format, Level: level}))
	trust, err := spiffeid.TrustDomainFromString(*td)
	if err != nil {
		log.Error("bad --trust-domain", "error", err.Error())
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	idOpts := identity.ManagerOptions{
		Source: identity.NewDirSource(*svidDir, trust), Logger: log.With("scope", "identity"), RefreshInterval: time.Minute,
	}
	if *caAddr != "" {
		cs, err := identity.NewGRPCSource(identity.GRPCSourceOptions{Address: *caAddr, RootFile: *caRoot, TokenFile: *caToken, TrustDomain: trust, ClusterID: *clusterID})
		if err != nil {
			log.Error("identities", "error", err.Error())
			return 2
		}
		defer cs.Close()
		idOpts.Source, idOpts.RefreshInterval = cs, 0 // a new SVID on every fetch: rotate at half-life only
	}
	idm, err := identity.NewManager(ctx, idOpts)
	if err != nil {
		log.Error("identities", "error", err.Error())
		return 1
	}
	defer idm.Close()

	opts := []state.Option{state.WithTrustDomain(*td)}
	store := state.NewStore(state.Empty(opts...))
	var loaded atomic.Bool
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if *xdsAddr != "" {
		xo := xds.Options{Address: *xdsAddr, TokenFile: *xdsToken}
		if *xdsRoot != "" {
			if xo.Credentials, err = xds.TLSCredentials(*xdsRoot, *xdsServerName); err != nil {
				log.Error("xds", "error", err.Error())
				return 2
			}
		}
		xo.Node.ClusterID = *clusterID
		if err := runXDS(watchCtx, xo, *node, store, &loaded, log, opts); err != nil {
			log.Error("xds", "error", err.Error())
			return 2
		}
	} else {
		go state.Watch(watchCtx, *configFile, log.With("scope", "state"), func(st *state.State) {
			store.Store(st)
			loaded.Store(true)
			log.Info("state loaded", "scope", "state", "file", *configFile, "workloads", len(st.Resources().Workloads),
				"services", len(st.Resources().Services), "authorizations", len(st.Resources().Authorizations))
		}, opts...)
	}

	if *loopback && len(podNS) > 0 {
		log.Error("--loopback and --pod-netns exclude each other")
		return 2
	}
	pods, closePods, err := podNS.open()
	if err != nil {
		log.Error("pod namespaces", "error", err.Error())
		return 1
	}
	defer closePods()
	var podSet *proxy.PodSet
	if *zdsSocket != "" {
		podSet = proxy.NewPodSet(log)
		pods = podSet
		defer podSet.Close() // after Shutdown (defers run last-in first-out)
	}
	var resolver proxy.HostResolver // nil: Go's resolver
	upstreams, upErr := dnsproxy.ReadResolvConf(*resolvConf)
	if upErr == nil {
		if r, err := dnsproxy.NewResolver(dnsproxy.ResolverConfig{Upstreams: upstreams}); err == nil {
			resolver = r
		}
	} else if *dnsAddr != "" || *dnsCapture {
		log.Error("the DNS proxy needs upstream resolvers", "error", upErr.Error())
		return 2
	}
	var podDNS proxy.DNSServer
	if *dnsAddr != "" || *dnsCapture {
		dp, err := dnsproxy.New(dnsproxy.Config{Store: store, Upstreams: upstreams, Logger: log})
		if err != nil {
			log.Error("dns proxy", "error", err.Error())
			return 2
		}
		if *dnsCapture {
			podDNS = dp
		}
		if *dnsAddr != "" {
			pc, ln, err := dnsproxy.Listen(*dnsAddr)
			if err != nil {
				log.Error("dns proxy", "error", err.Error())
				return 1
			}
			dnsCtx, stopDNS := context.WithCancel(ctx)
			dnsDone := make(chan struct{})
			go func() { defer close(dnsDone); dp.Serve(dnsCtx, pc, ln) }()
			defer func() { stopDNS(); <-dnsDone }()
			log.Info("listener established", "address", pc.LocalAddr().String(), "component", "dns_proxy", "upstreams", fmt.Sprint(upstreams))
		}
	}
	offsetRule := proxy.AppOffsetRule(byte(*appOffset))
	p, err := proxy.New(proxy.Config{
		Logger: log, Node: *node, TrustDomain: *td, Store: store, Identity: idm,
		Loopback: *loopback, Namespaces: pods,
		AppAddr: func(pod netip.AddrPort) netip.AddrPort {
			if a, ok := apps[pod]; ok {
				return a
			}
			return offsetRule(pod)
		},
		Ready:          loaded.Load,
		Resolver:       resolver,
		DNS:            podDNS,
		DrainGrace:     *grace,
		DisableBaggage: !*baggage,
		HBONEServer:    hboneLimits,
		Listen: proxy.Listen{
			InboundHBONE: *hboneAddr, InboundPlaintext: *plainAddr, Outbound: *outAddr, SOCKS5: *socksAddr,
			Metrics: *metricsAddr, Readiness: *readyAddr, Admin: *adminAddr,
		},
	})
	if err == nil {
		err = p.Start()
	}
	if err != nil {
		log.Error("cannot start", "error", err.Error())
		return 1
	}
	if podSet != nil {
		zdsDone := make(chan struct{})
		zdsCtx, stopZDS := context.WithCancel(ctx)
		go func() {
			defer close(zdsDone)
			zds.Run(zdsCtx, zds.Config{Socket: *zdsSocket, Handler: podSet, Logger: log})
		}()
		defer func() { stopZDS(); <-zdsDone }()
	}
	log.Info("ztunnel started", "node", *node, "loopback", *loopback, "zds_socket", *zdsSocket)
	<-ctx.Done()
	log.Info("draining", "grace", grace.String())
	stopWatch()
	p.Shutdown(context.Background())
	log.Info("stopped")
	return 0
}

// runXDS starts the delta ADS client of xo (its address and, for TLS, credentials and token
// file) into store; loaded turns true once every type was received. The ztunnel pod's identity
// comes from Istio's environment variables (POD_NAME, POD_NAMESPACE, INSTANCE_IP), with local
// defaults.
func runXDS(ctx context.Context, xo xds.Options, node string, store *state.Store, loaded *atomic.Bool, log *slog.Logger, opts []state.Option) error {
	addr := xo.Address
	xo.Store, xo.StateOptions, xo.Logger = store, opts, log.With("scope", "xds")
	xo.Node = xds.Node{
		IP:        cmp.Or(os.Getenv("INSTANCE_IP"), "127.0.0.1"),
		PodName:   cmp.Or(os.Getenv("POD_NAME"), "ztunnel-"+node),
		Namespace: cmp.Or(os.Getenv("POD_NAMESPACE"), "istio-system"),
		NodeName:  node,
		ClusterID: xo.Node.ClusterID,
	}
	c, err := xds.New(xo)
	if err != nil {
		return err
	}
	go func() { _ = c.Run(ctx) }()
	go func() {
		select {
		case <-c.Synced():
			loaded.Store(true)
			st := store.Load().Resources()
			log.Info("state received", "scope", "xds", "address", addr, "workloads", len(st.Workloads),
				"services", len(st.Services), "authorizations", len(st.Authorizations))
		case <-ctx.Done():
		}
	}()
	return nil
}

// appMap is the repeatable --app flag.
type appMap map[netip.AddrPort]netip.AddrPort

func (m *appMap) String() string {
	var s []string
	for k, v := range *m {
		s = append(s, k.String()+"="+v.String())
	}
	return strings.Join(s, ",")
}

func (m *appMap) Set(v string) error {
	pod, app, ok := strings.Cut(v, "=")
	if !ok {
		return fmt.Errorf("want podIP:port=appIP:port, got %q", v)
	}
	pa, err := netip.ParseAddrPort(pod)
	if err != nil {
		return err
	}
	aa, err := netip.ParseAddrPort(app)
	if err != nil {
		return err
	}
	if *m == nil {
		*m = appMap{}
	}
	(*m)[pa] = aa
	return nil
}
