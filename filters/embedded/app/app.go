// Package app wires the embedded waypoint together: identity from an SVID folder or the control plane's CA, the xDS client into the config store, the HBONE server with the filter host, the access log and the readiness endpoint.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/goambient/goambient/filters/authz"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/embedded/accesslog"
	"github.com/goambient/goambient/filters/embedded/config"
	"github.com/goambient/goambient/filters/embedded/host"
	"github.com/goambient/goambient/filters/embedded/server"
	"github.com/goambient/goambient/filters/embedded/stats"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/identity"
	"github.com/goambient/goambient/ztunnel/state"
	"github.com/goambient/goambient/ztunnel/xds"
)

// Options configure the waypoint.
type Options struct {
	XDSAddress  string // the control plane's plaintext ADS address
	NodeID      string // waypoint~<ip>~<pod>.<ns>~<ns>.svc.cluster.local
	Listen      string // HBONE listener, ip:15008
	ReadyListen string // /healthz/ready listener; "" for none
	// MetricsListen is the Prometheus listener (/stats/prometheus, /metrics: Istio's request
	// metrics with reporter="waypoint", Go runtime and process metrics); "" for none, and then
	// no request metrics are recorded.
	MetricsListen string
	SVIDDir       string // the folder `meshctl certs issue` writes
	// Identity, when set, supplies the SVIDs instead of SVIDDir (the control plane's CA:
	// identity.GRPCSource).
	Identity    identity.Source
	TrustDomain string // cluster.local when empty
	// ServiceAccount is the waypoint's own service account when the workload API does not name
	// it (its workload is found by the node IP); the pod name when empty.
	ServiceAccount string
	AccessLog      io.Writer
	Logger         *slog.Logger
	Host           *host.Host // the authorization filter on the host adapter
	// Rand is the source of randomness (weighted clusters, fault and mirror percentages, load
	// balancing, back-off); random when nil, seeded in tests.
	Rand server.Rand
	// Limits bound each stream's resources (server.Limits; its defaults when zero).
	Limits server.Limits
}

// App is a running waypoint.
type App struct {
	Store  *config.Store
	Server *server.Server
	XDS    *xds.Client

	node    config.Node
	td      spiffeid.TrustDomain
	sa      string
	idm     *identity.Manager
	hb      *hbone.Server
	client  *hbone.Client
	hs      *http.Server
	ms      *http.Server
	ln, rln net.Listener
	mln     net.Listener
	cancel  context.CancelFunc
	done    chan struct{}
}

// Start starts the waypoint; Stop stops it.
func Start(ctx context.Context, o Options) (*App, error) {
	if o.Host == nil || (o.SVIDDir == "") == (o.Identity == nil) || o.NodeID == "" || o.XDSAddress == "" || o.Listen == "" {
		return nil, errors.New("waypoint: the node id, xDS address, listen address, filter host, and an SVID folder or an identity source are required")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	node, err := config.ParseNodeID(o.NodeID)
	if err != nil {
		return nil, err
	}
	tdName := o.TrustDomain
	if tdName == "" {
		tdName = state.DefaultTrustDomain
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return nil, err
	}
	a := &App{node: node, td: td, sa: o.ServiceAccount, done: make(chan struct{})}
	if a.sa == "" {
		a.sa = node.Pod
	}
	ctx, a.cancel = context.WithCancel(ctx)
	fail := func(err error) (*App, error) { a.Stop(); return nil, err }

	mo := identity.ManagerOptions{Source: o.Identity, Logger: log.With("scope", "identity")}
	if o.Identity == nil { // files can be rewritten at any time; a CA issues anew on each fetch
		mo.Source, mo.RefreshInterval = identity.NewDirSource(o.SVIDDir, td), time.Minute
	}
	a.idm, err = identity.NewManager(ctx, mo)
	if err != nil {
		return fail(err)
	}
	sopts := []state.Option{state.WithTrustDomain(tdName)}
	a.Store = config.NewStore(o.Host, node, log.With("scope", "config"), sopts...)
	// The node id on every subscription: xdsserver assigns a node its waypoint per Envoy type.
	a.XDS, err = xds.New(xds.Options{
		Address: o.XDSAddress, NodeID: o.NodeID, NodeOnEveryRequest: true, Types: config.Types,
		Apply: a.Store.Apply, Logger: log.With("scope", "xds"),
	})
	if err != nil {
		return fail(err)
	}
	a.client, err = hbone.NewClient(hbone.ClientConfig{Logger: log.With("scope", "hbone"), Bundle: a.idm})
	if err != nil {
		return fail(err)
	}
	var al *accesslog.Logger
	if o.AccessLog != nil {
		al = accesslog.New(o.AccessLog)
	}
	var obs server.Observer
	if o.MetricsListen != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		p, err := stats.NewPrometheus(reg, 0)
		if err != nil {
			return fail(err)
		}
		obs = stats.Observer{P: p}
		if a.mln, err = net.Listen("tcp", o.MetricsListen); err != nil {
			return fail(err)
		}
		a.ms = stats.Server(reg)
		go stats.Serve(a.ms, a.mln)
	}
	a.Server, err = server.New(server.Options{
		Logger: log.With("scope", "waypoint"), Store: a.Store, Host: o.Host, AccessLog: al, Client: a.client, SVID: a.SVID,
		Rand: o.Rand, Hostname: node.Pod, Limits: o.Limits, Observer: obs,
	})
	if err != nil {
		return fail(err)
	}
	a.hb, err = hbone.NewServer(hbone.ServerConfig{
		Logger: log.With("scope", "hbone"), Bundle: a.idm, TrustDomains: []spiffeid.TrustDomain{td},
		GetCertificate: func(netip.Addr) (*x509svid.SVID, error) { return a.SVID() },
		Handler:        a.Server,
	})
	if err != nil {
		return fail(err)
	}
	if a.ln, err = net.Listen("tcp", o.Listen); err != nil {
		return fail(err)
	}
	if o.ReadyListen != "" {
		if a.rln, err = net.Listen("tcp", o.ReadyListen); err != nil {
			return fail(err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
			if !a.Store.Ready() {
				http.Error(w, "no filter config or routes yet", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ready")
		})
		a.hs = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go a.hs.Serve(a.rln)
	}
	go a.hb.Serve(a.ln)
	go func() { defer close(a.done); _ = a.XDS.Run(ctx) }()
	attrs := []any{"node", o.NodeID, "listen", a.ln.Addr().String(), "xds", o.XDSAddress, "identity", a.ID().String()}
	if a.mln != nil {
		attrs = append(attrs, "metrics", a.mln.Addr().String())
	}
	log.Info("waypoint started", attrs...)
	return a, nil
}

// ID is the waypoint's SPIFFE ID: its workload's identity in the workload API, else
// spiffe://<td>/ns/<namespace>/sa/<service account>.
func (a *App) ID() spiffeid.ID {
	if snap := a.Store.Load(); snap.Self != nil {
		if id, err := spiffeid.FromString(snap.State.Identity(snap.Self)); err == nil {
			return id
		}
	}
	id, _ := identity.WorkloadID(a.td, a.node.Namespace, a.sa)
	return id
}

// SVID returns the waypoint's current SVID.
func (a *App) SVID() (*x509svid.SVID, error) { return a.idm.GetSVID(a.ID()) }

// Addr is the HBONE listener's address.
func (a *App) Addr() net.Addr { return a.ln.Addr() }

// ReadyAddr is the readiness listener's address (nil without one).
func (a *App) ReadyAddr() net.Addr {
	if a.rln == nil {
		return nil
	}
	return a.rln.Addr()
}

// MetricsAddr is the metrics listener's address (nil without one).
func (a *App) MetricsAddr() net.Addr {
	if a.mln == nil {
		return nil
	}
	return a.mln.Addr()
}

// Stop closes the listeners, the streams and the xDS client.
func (a *App) Stop() {
	if a.cancel != nil {
		a.cancel()
	}
	if a.hb != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = a.hb.Shutdown(ctx)
		cancel()
	} else if a.ln != nil {
		a.ln.Close()
	}
	if a.hs != nil {
		a.hs.Close()
	} else if a.rln != nil {
		a.rln.Close()
	}
	if a.ms != nil {
		a.ms.Close()
	} else if a.mln != nil {
		a.mln.Close()
	}
	if a.client != nil {
		a.client.Close()
	}
	if a.XDS != nil {
		<-a.done
	}
	if a.idm != nil {
		a.idm.Close()
	}
}

// AuthzHost is the goambient.authz filter (filters/authz) on the production host adapter: the
// same filter code Envoy loads from filters.so, registered under the same plugin name.
func AuthzHost(log *slog.Logger) (*host.Host, error) {
	return host.New(host.Plugin{Name: authzconfig.PluginName, Factory: authz.Factory, Parser: authz.Parser{}}, log)
}
