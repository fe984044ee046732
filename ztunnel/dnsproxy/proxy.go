package dnsproxy

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/netutil"

	"github.com/goambient/goambient/ztunnel/state"
)

// TTL is the time to live of the proxy's own answers, as Istio's ztunnel gives them (30 s).
const TTL = 30

// Limits bound what a client can make the proxy hold. The zero value takes the defaults.
type Limits struct {
	UDPWorkers      int           // goroutines reading and answering UDP queries (default 4)
	MaxForwards     int           // upstream queries in flight (default 128); beyond it SERVFAIL at once
	UpstreamTimeout time.Duration // for one forwarded query, all upstreams together (default 2 s)
	MaxTCPConns     int           // TCP connections served at once (default 64); more wait in the backlog
	TCPReadTimeout  time.Duration // to read a query on a TCP connection, and between queries (default 3 s)
	MaxTCPQueries   int           // queries per TCP connection (default 64)
	MaxUDPSize      int           // largest UDP answer, whatever EDNS0 asks (default 1232); larger ones are truncated (TC)
}

func (l Limits) withDefaults() Limits {
	l.UDPWorkers = cmp.Or(l.UDPWorkers, 4)
	l.MaxForwards = cmp.Or(l.MaxForwards, 128)
	l.UpstreamTimeout = cmp.Or(l.UpstreamTimeout, 2*time.Second)
	l.MaxTCPConns = cmp.Or(l.MaxTCPConns, 64)
	l.TCPReadTimeout = cmp.Or(l.TCPReadTimeout, 3*time.Second)
	l.MaxTCPQueries = cmp.Or(l.MaxTCPQueries, 64)
	l.MaxUDPSize = min(cmp.Or(l.MaxUDPSize, 1232), dns.MaxMsgSize)
	return l
}

// Config is what a Proxy needs.
type Config struct {
	Store         *state.Store     // the workload state the answers come from
	Upstreams     []netip.AddrPort // the node's resolvers, tried in order (ReadResolvConf)
	ClusterDomain string           // "cluster.local" when empty
	Logger        *slog.Logger     // nil: none
	Limits        Limits
}

// Stats counts what the proxy did, for tests and metrics.
type Stats struct {
	Local, Forwarded, Refused, Failed atomic.Int64 // answered from the state; forwarded; SERVFAIL for the forward limit; upstream failures
}

// Proxy answers DNS queries for workloads: A and AAAA for mesh services and ServiceEntry hosts
// from the workload state (their VIPs, or a headless service's endpoint addresses), the rest
// from the upstream resolvers. Serve it on UDP and TCP.
type Proxy struct {
	cfg    Config
	lim    Limits
	log    *slog.Logger
	fwd    chan struct{} // forward slots
	suffix []string      // search suffixes stripped from a name not found as it is
	Stats  Stats
}

// New checks cfg and builds a Proxy.
func New(cfg Config) (*Proxy, error) {
	if cfg.Store == nil {
		return nil, errors.New("dnsproxy: no state store")
	}
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("dnsproxy: no upstream resolver")
	}
	cfg.ClusterDomain = strings.Trim(cmp.Or(cfg.ClusterDomain, "cluster.local"), ".")
	lim := cfg.Limits.withDefaults()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Proxy{cfg: cfg, lim: lim, log: log.With("scope", "dns"), fwd: make(chan struct{}, lim.MaxForwards)}, nil
}

// ServeUDP answers the queries that arrive on pc until ctx ends, with Limits.UDPWorkers
// goroutines; forwarded queries are answered by at most Limits.MaxForwards more. It closes pc.
func (p *Proxy) ServeUDP(ctx context.Context, pc net.PacketConn) error {
	return p.serveUDP(ctx, pc, nil)
}

// Dial opens the connection a forwarded query goes out on (nil: from the ztunnel's own
// network namespace).
type Dial func(ctx context.Context, network, addr string) (net.Conn, error)

func (p *Proxy) serveUDP(ctx context.Context, pc net.PacketConn, dial Dial) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	var wg sync.WaitGroup
	for range p.lim.UDPWorkers {
		wg.Go(func() {
			defer cancel() // a worker that stops on an error stops the others
			p.udpWorker(ctx, pc, &wg, dial)
		})
	}
	wg.Wait()
	pc.Close()
	return ctx.Err()
}

func (p *Proxy) udpWorker(ctx context.Context, pc net.PacketConn, wg *sync.WaitGroup, dial Dial) {
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue // a transient error (ICMP unreachable reported on the socket)
		}
		q := new(dns.Msg)
		if q.Unpack(buf[:n]) != nil || q.Response {
			continue // not a query: no answer, as a resolver drops garbage
		}
		client := addrOf(from)
		size := udpSize(q, p.lim.MaxUDPSize)
		write := func(r *dns.Msg) {
			r.Truncate(size)
			if b, err := r.Pack(); err == nil {
				pc.WriteTo(b, from)
			}
		}
		if r := p.local(q, client); r != nil {
			write(r)
			continue
		}
		select {
		case p.fwd <- struct{}{}:
			wg.Go(func() {
				defer func() { <-p.fwd }()
				write(p.forward(ctx, q, dial))
			})
		default:
			p.Stats.Refused.Add(1)
			write(reply(q, dns.RcodeServerFailure))
		}
	}
}

// ServeTCP answers queries on TCP connections from ln until ctx ends: at most
// Limits.MaxTCPConns connections at once, each closed after Limits.MaxTCPQueries queries or
// Limits.TCPReadTimeout without one. It closes ln.
func (p *Proxy) ServeTCP(ctx context.Context, ln net.Listener) error {
	return p.serveTCP(ctx, ln, nil)
}

func (p *Proxy) serveTCP(ctx context.Context, ln net.Listener, dial Dial) error {
	srv := &dns.Server{
		Listener:      netutil.LimitListener(ln, p.lim.MaxTCPConns),
		ReadTimeout:   p.lim.TCPReadTimeout,
		WriteTimeout:  p.lim.TCPReadTimeout,
		IdleTimeout:   func() time.Duration { return p.lim.TCPReadTimeout },
		MaxTCPQueries: p.lim.MaxTCPQueries,
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
			client := addrOf(w.RemoteAddr())
			r := p.local(q, client)
			if r == nil {
				select {
				case p.fwd <- struct{}{}:
					r = p.forward(ctx, q, dial)
					<-p.fwd
				default:
					p.Stats.Refused.Add(1)
					r = reply(q, dns.RcodeServerFailure)
				}
			}
			w.WriteMsg(r)
		}),
	}
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), p.lim.TCPReadTimeout+p.lim.UpstreamTimeout)
	defer cancel()
	srv.ShutdownContext(sctx)
	<-done
	return ctx.Err()
}

// local is the proxy's own answer to q from client, or nil when it is to be forwarded.
func (p *Proxy) local(q *dns.Msg, client netip.Addr) *dns.Msg {
	if q.Opcode != dns.OpcodeQuery {
		return reply(q, dns.RcodeNotImplemented)
	}
	if len(q.Question) != 1 {
		return reply(q, dns.RcodeFormatError)
	}
	question := q.Question[0]
	if question.Qclass != dns.ClassINET || (question.Qtype != dns.TypeA && question.Qtype != dns.TypeAAAA) {
		return nil
	}
	st := p.cfg.Store.Load()
	ns := st.WorkloadByIP(client).GetNamespace()
	addrs, ok := p.lookup(st, question.Name, ns)
	if !ok {
		return nil
	}
	p.Stats.Local.Add(1)
	r := reply(q, dns.RcodeSuccess)
	r.Authoritative = true
	for _, a := range addrs {
		hdr := dns.RR_Header{Name: question.Name, Class: dns.ClassINET, Ttl: TTL}
		switch {
		case a.Is4() && question.Qtype == dns.TypeA:
			hdr.Rrtype = dns.TypeA
			r.Answer = append(r.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case a.Is6() && question.Qtype == dns.TypeAAAA:
			hdr.Rrtype = dns.TypeAAAA
			r.Answer = append(r.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	return r
}

// lookup finds the addresses of a name for a client in namespace ns: a service's VIPs, else
// (headless) its endpoints' addresses. A name the client's resolver expanded with a search
// domain ("api.example.com.shop.svc.cluster.local") is tried without it too, and a ServiceEntry's
// wildcard host ("*.example.com") matches the names under it. ok is false for a name the
// state does not know, or whose service has no address to give (hostname endpoints: the
// upstream resolves the real name).
func (p *Proxy) lookup(st *state.State, name, ns string) ([]netip.Addr, bool) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	for _, n := range p.candidates(name, ns) {
		sv, found := st.Resolve(n, ns)
		if !found {
			continue
		}
		if vips := st.VIPs(sv); len(vips) > 0 {
			return vips, true
		}
		var addrs []netip.Addr
		for _, ep := range st.Endpoints(sv) {
			addrs = append(addrs, st.Addresses(ep)...)
		}
		return addrs, len(addrs) > 0
	}
	return nil, false
}

// candidates are the names to try for a query: the name, the name without the search
// suffixes a pod's resolv.conf adds, and the wildcard hosts over each.
func (p *Proxy) candidates(name, ns string) []string {
	out := []string{name}
	for _, sfx := range []string{"." + ns + ".svc." + p.cfg.ClusterDomain, ".svc." + p.cfg.ClusterDomain, "." + p.cfg.ClusterDomain} {
		if h, ok := strings.CutSuffix(name, sfx); ok && strings.Contains(h, ".") {
			out = append(out, h)
			break
		}
	}
	for _, n := range out[:len(out):len(out)] {
		for rest := n; ; {
			_, after, ok := strings.Cut(rest, ".")
			if !ok || !strings.Contains(after, ".") {
				break
			}
			out = append(out, "*."+after)
			rest = after
		}
	}
	return out
}

// forward asks the upstreams in turn (UDP, then TCP when the answer is truncated) and returns
// their answer to q, or SERVFAIL.
func (p *Proxy) forward(ctx context.Context, q *dns.Msg, dial Dial) *dns.Msg {
	ctx, cancel := context.WithTimeout(ctx, p.lim.UpstreamTimeout)
	defer cancel()
	p.Stats.Forwarded.Add(1)
	for _, up := range p.cfg.Upstreams {
		r, err := exchange(ctx, q, up.String(), p.lim.UpstreamTimeout, dial)
		if err != nil {
			p.log.Debug("upstream resolver failed", "upstream", up.String(), "error", err.Error())
			if ctx.Err() != nil {
				break
			}
			continue
		}
		r.Id = q.Id
		return r
	}
	p.Stats.Failed.Add(1)
	return reply(q, dns.RcodeServerFailure)
}

// exchange sends q to one upstream over UDP, and over TCP when the answer is truncated, on
// connections from dial (nil: the ztunnel's own namespace).
func exchange(ctx context.Context, q *dns.Msg, addr string, timeout time.Duration, dial Dial) (*dns.Msg, error) {
	c := &dns.Client{Net: "udp", Timeout: timeout, UDPSize: dns.DefaultMsgSize}
	once := func() (*dns.Msg, error) {
		if dial == nil {
			r, _, err := c.ExchangeContext(ctx, q, addr)
			return r, err
		}
		conn, err := dial(ctx, c.Net, addr)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		co := &dns.Conn{Conn: conn, UDPSize: c.UDPSize}
		r, _, err := c.ExchangeWithConnContext(ctx, q, co)
		return r, err
	}
	r, err := once()
	if err == nil && r.Truncated {
		c.Net = "tcp"
		r, err = once()
	}
	return r, err
}

// reply is an empty answer to q with a response code.
func reply(q *dns.Msg, rcode int) *dns.Msg {
	r := new(dns.Msg)
	r.SetRcode(q, rcode)
	r.RecursionAvailable = true
	return r
}

// udpSize is how large a UDP answer to q may be: its EDNS0 size (512 without), up to max.
func udpSize(q *dns.Msg, max int) int {
	if opt := q.IsEdns0(); opt != nil {
		return min(int(opt.UDPSize()), max)
	}
	return dns.MinMsgSize
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// Serve serves p on a UDP socket and a TCP listener (usually the same port) until ctx ends,
// and closes both.
func (p *Proxy) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	return p.ServeDialing(ctx, pc, ln, nil)
}

// ServeDialing is Serve with forwarded queries sent on connections from dial: in namespace
// mode, from inside the pod's namespace with ztunnel's mark, as Istio's ztunnel does.
func (p *Proxy) ServeDialing(ctx context.Context, pc net.PacketConn, ln net.Listener, dial Dial) error {
	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Go(func() { errs[0] = p.serveUDP(ctx, pc, dial) })
	wg.Go(func() { errs[1] = p.serveTCP(ctx, ln, dial) })
	wg.Wait()
	return errors.Join(errs...)
}

// Listen opens UDP and TCP sockets on the same address. With port 0 the UDP socket picks the
// port, and another one is tried when that port is taken for TCP (up to 16 times).
func Listen(addr string) (net.PacketConn, net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	tries := 1
	if port == "0" {
		tries = 16
	}
	for i := 0; ; i++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if i+1 >= tries {
			return nil, nil, err
		}
	}
}
