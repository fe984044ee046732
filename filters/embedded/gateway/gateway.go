// Package gateway is the embedded ingress gateway (a Gateway of class istio where Envoy cannot run): it serves the listeners xdsserver sends the Gateway (LDS, RDS, CDS, EDS, SDS, the workload API) with HTTP/1.1 and HTTP/2 (h2c, and TLS with ALPN), terminates TLS with the listener's certificate, routes by host and path, and proxies each request over HBONE with the gateway's own identity to the pod's ztunnel or the Service's waypoint.
package gateway

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc/credentials"

	"github.com/goambient/goambient/filters/embedded/accesslog"
	"github.com/goambient/goambient/ztunnel/hbone"
	"github.com/goambient/goambient/ztunnel/identity"
	"github.com/goambient/goambient/ztunnel/xds"
)

// Limits bound what a client can hold on a listener. The zero value means the defaults.
type Limits struct {
	MaxConnections       int           // per listener (1024); more wait in the kernel's backlog
	MaxHeaderBytes       int           // request line and headers (60 KiB, Envoy's max_request_headers_kb); 431 above
	HeaderTimeout        time.Duration // to read a request's headers, and the TLS handshake (10 s)
	IdleTimeout          time.Duration // a keep-alive connection without a request (60 s)
	RequestTimeout       time.Duration // a whole request: reading its body and writing the answer (5 min)
	MaxConcurrentStreams int           // HTTP/2 streams per connection (100)
	MaxUpstreamPerHost   int           // HBONE streams to one upstream host (256); more wait for one
	MaxResponseHeader    int64         // an upstream answer's headers (60 KiB); 503 (UF) above
}

func (l Limits) withDefaults() Limits {
	l.MaxConnections = cmp.Or(l.MaxConnections, 1024)
	l.MaxHeaderBytes = cmp.Or(l.MaxHeaderBytes, 60<<10)
	l.HeaderTimeout = cmp.Or(l.HeaderTimeout, 10*time.Second)
	l.IdleTimeout = cmp.Or(l.IdleTimeout, 60*time.Second)
	l.RequestTimeout = cmp.Or(l.RequestTimeout, 5*time.Minute)
	l.MaxConcurrentStreams = cmp.Or(l.MaxConcurrentStreams, 100)
	l.MaxUpstreamPerHost = cmp.Or(l.MaxUpstreamPerHost, 256)
	l.MaxResponseHeader = cmp.Or(l.MaxResponseHeader, 60<<10)
	return l
}

// Options configure a gateway.
type Options struct {
	XDSAddress string // the control plane's ADS; empty: configured only by Store().Apply (tests)
	// XDSCredentials and XDSTokenFile, when set, secure the ADS stream (the control plane's
	// TLS listener, with a token authenticating this Gateway): the only way its TLS
	// certificates are served. Without them only plain HTTP listeners are served.
	XDSCredentials credentials.TransportCredentials
	XDSTokenFile   string
	NodeID         string // router~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local
	// Identity supplies the gateway's SVID (a CA, or identity.NewDirSource).
	Identity       identity.Source
	TrustDomain    string // cluster.local when empty
	ServiceAccount string // the gateway's service account (<gateway>-istio); required
	// ListenAddress maps an xDS listener port to the address it is served on; ":<port>"
	// when nil (tests map to 127.0.0.1:0).
	ListenAddress func(port uint32) string
	AccessLog     io.Writer // nil: none
	Logger        *slog.Logger
	Limits        Limits
	// Dial, when set, opens the gateway's TCP connections to HBONE peers (tests).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Gateway is a running ingress gateway.
type Gateway struct {
	o      Options
	log    *slog.Logger
	lim    Limits
	td     spiffeid.TrustDomain
	ns     string
	id     spiffeid.ID
	store  *Store
	idm    *identity.Manager
	client *hbone.Client
	xc     *xds.Client
	al     *accesslog.Logger

	mu        sync.Mutex
	listeners map[uint32]*served // by port
	closed    bool
	up        *transports

	cancel context.CancelFunc
	done   chan struct{}
}

type served struct {
	ln  net.Listener
	srv *http.Server
}

// ParseNodeID returns the pod and namespace of router~<ip>~<pod>.<namespace>~<domain>.
func ParseNodeID(id string) (pod, ns string, err error) {
	parts := strings.Split(id, "~")
	if len(parts) != 4 || parts[0] != "router" {
		return "", "", fmt.Errorf("node id %q: want router~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local", id)
	}
	pod, ns, ok := strings.Cut(parts[2], ".")
	if !ok || pod == "" || ns == "" {
		return "", "", fmt.Errorf("node id %q: %q is not <pod>.<namespace>", id, parts[2])
	}
	return pod, ns, nil
}

// Start starts the gateway: its listeners open as the configuration names them.
func Start(ctx context.Context, o Options) (*Gateway, error) {
	if o.Identity == nil || o.NodeID == "" || o.ServiceAccount == "" {
		return nil, errors.New("gateway: the node id, the service account and an identity source are required")
	}
	_, ns, err := ParseNodeID(o.NodeID)
	if err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(cmp.Or(o.TrustDomain, "cluster.local"))
	if err != nil {
		return nil, err
	}
	id, err := identity.WorkloadID(td, ns, o.ServiceAccount)
	if err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{o: o, log: log, lim: o.Limits.withDefaults(), td: td, ns: ns, id: id,
		listeners: map[uint32]*served{}, done: make(chan struct{})}
	g.up = newTransports(g)
	if o.AccessLog != nil {
		g.al = accesslog.New(o.AccessLog)
	}
	ctx, g.cancel = context.WithCancel(ctx)
	fail := func(err error) (*Gateway, error) { g.Stop(); return nil, err }
	if g.idm, err = identity.NewManager(ctx, identity.ManagerOptions{Source: o.Identity, Logger: log.With("scope", "identity")}); err != nil {
		return fail(err)
	}
	if g.client, err = hbone.NewClient(hbone.ClientConfig{Logger: log.With("scope", "hbone"), Bundle: g.idm, DialContext: o.Dial}); err != nil {
		return fail(err)
	}
	g.store = NewStore(log.With("scope", "config"), td.Name(), g.reconcile)
	if o.XDSAddress != "" {
		g.xc, err = xds.New(xds.Options{Address: o.XDSAddress, NodeID: o.NodeID, NodeOnEveryRequest: true, Types: Types,
			Apply: g.store.Apply, Logger: log.With("scope", "xds"), Credentials: o.XDSCredentials, TokenFile: o.XDSTokenFile})
		if err != nil {
			return fail(err)
		}
		go func() { defer close(g.done); _ = g.xc.Run(ctx) }()
	}
	log.Info("gateway started", "node", o.NodeID, "identity", id.String(), "xds", o.XDSAddress)
	return g, nil
}

// Store is the gateway's configuration (Apply feeds it).
func (g *Gateway) Store() *Store { return g.store }

// ID is the gateway's SPIFFE ID.
func (g *Gateway) ID() spiffeid.ID { return g.id }

// SVID is the gateway's current SVID.
func (g *Gateway) SVID() (*x509svid.SVID, error) { return g.idm.GetSVID(g.id) }

// Addr is the address the listener of an xDS port is served on, nil when none is open.
func (g *Gateway) Addr(port uint32) net.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	if s := g.listeners[port]; s != nil {
		return s.ln.Addr()
	}
	return nil
}

// reconcile opens the listeners of new ports and closes those of ports gone (called by the
// store with each new snapshot; a listener that cannot open is logged and tried again at the
// next snapshot).
func (g *Gateway) reconcile(snap *Snapshot) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	for port, s := range g.listeners {
		if snap.Ports[port] == nil {
			s.srv.Close()
			delete(g.listeners, port)
			g.log.Info("listener closed", "port", port)
		}
	}
	for port := range snap.Ports {
		if g.listeners[port] != nil {
			continue
		}
		s, err := g.listen(port, snap.Ports[port].Chains[0].Cert != nil)
		if err != nil {
			g.log.Error("listener", "port", port, "error", err.Error())
			continue
		}
		g.listeners[port] = s
		g.log.Info("listener open", "port", port, "address", s.ln.Addr().String(), "tls", snap.Ports[port].Chains[0].Cert != nil)
	}
	g.up.retain(snap)
}

func (g *Gateway) listen(port uint32, useTLS bool) (*served, error) {
	addr := ":" + strconv.FormatUint(uint64(port), 10)
	if g.o.ListenAddress != nil {
		addr = g.o.ListenAddress(port)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	lim := g.lim
	srv := &http.Server{
		Handler:           &handler{g: g, port: port},
		ReadHeaderTimeout: lim.HeaderTimeout,
		ReadTimeout:       lim.RequestTimeout,
		WriteTimeout:      lim.RequestTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: lim.MaxConcurrentStreams, MaxDecoderHeaderTableSize: 4096, MaxEncoderHeaderTableSize: 4096},
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
		Protocols:         new(http.Protocols),
	}
	srv.Protocols.SetHTTP1(true)
	if useTLS {
		srv.Protocols.SetHTTP2(true)
		srv.TLSConfig = &tls.Config{
			MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"},
			GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
				p := g.store.Load().Ports[port]
				if p == nil {
					return nil, errors.New("listener gone")
				}
				c := p.chain(strings.ToLower(hello.ServerName))
				if c == nil || c.Cert == nil {
					return nil, fmt.Errorf("no certificate for server name %q", hello.ServerName)
				}
				return c.Cert, nil
			},
		}
	} else {
		srv.Protocols.SetUnencryptedHTTP2(true)
	}
	limited := netutil.LimitListener(ln, lim.MaxConnections)
	go func() {
		var err error
		if useTLS {
			err = srv.ServeTLS(limited, "", "")
		} else {
			err = srv.Serve(limited)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("listener stopped", "port", port, "error", err.Error())
		}
	}()
	return &served{ln: ln, srv: srv}, nil
}

// Stop closes the listeners, the xDS client and the upstream connections.
func (g *Gateway) Stop() {
	if g.cancel != nil {
		g.cancel()
	}
	g.mu.Lock()
	g.closed = true
	for port, s := range g.listeners {
		s.srv.Close()
		delete(g.listeners, port)
	}
	g.mu.Unlock()
	if g.xc != nil {
		<-g.done
	}
	if g.up != nil {
		g.up.closeAll()
	}
	if g.client != nil {
		g.client.Close()
	}
	if g.idm != nil {
		g.idm.Close()
	}
}

func (g *Gateway) random() uint64 { return rand.Uint64() }
