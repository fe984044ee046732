package dnsproxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/singleflight"
)

// ResolverConfig configures a Resolver. The zero durations and sizes take the defaults.
type ResolverConfig struct {
	Upstreams  []netip.AddrPort
	Timeout    time.Duration    // for one lookup, all upstreams together (default 2 s)
	MinTTL     time.Duration    // answers are cached at least this long (default 5 s), failures exactly this long
	MaxTTL     time.Duration    // and at most this long (default 5 min)
	MaxEntries int              // names cached (default 4096); when full, expired names go, then any
	Clock      func() time.Time // time.Now when nil
}

// Resolver resolves the DNS names of hostname workloads (ServiceEntry endpoints with
// resolution DNS) for the proxy's outbound connections, caching each answer for its TTL
// (clamped to [MinTTL, MaxTTL]); concurrent lookups of one name share one query.
type Resolver struct {
	cfg   ResolverConfig
	group singleflight.Group
	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	addrs   []netip.Addr
	err     error
	expires time.Time
}

// NewResolver builds a Resolver.
func NewResolver(cfg ResolverConfig) (*Resolver, error) {
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("dnsproxy: no upstream resolver")
	}
	cfg.Timeout = cmp.Or(cfg.Timeout, 2*time.Second)
	cfg.MinTTL = cmp.Or(cfg.MinTTL, 5*time.Second)
	cfg.MaxTTL = max(cmp.Or(cfg.MaxTTL, 5*time.Minute), cfg.MinTTL)
	cfg.MaxEntries = cmp.Or(cfg.MaxEntries, 4096)
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	return &Resolver{cfg: cfg, cache: map[string]cached{}}, nil
}

// Resolve returns the addresses of host (A and AAAA), from the cache while its answer lives.
func (r *Resolver) Resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	name := dns.Fqdn(strings.ToLower(host))
	if _, ok := dns.IsDomainName(name); !ok {
		return nil, fmt.Errorf("%q is not a DNS name", host)
	}
	r.mu.Lock()
	c, ok := r.cache[name]
	r.mu.Unlock()
	if ok && r.cfg.Clock().Before(c.expires) {
		return c.addrs, c.err
	}
	v, err, _ := r.group.Do(name, func() (any, error) {
		// The shared lookup is not tied to one caller's context; it has its own timeout.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.Timeout)
		defer cancel()
		addrs, ttl, err := r.lookup(lctx, name)
		if err != nil {
			ttl = r.cfg.MinTTL
		}
		r.store(name, cached{addrs: addrs, err: err, expires: r.cfg.Clock().Add(ttl)})
		return addrs, err
	})
	addrs, _ := v.([]netip.Addr)
	return addrs, err
}

// lookup asks for A and AAAA records and returns the addresses with the smallest TTL.
func (r *Resolver) lookup(ctx context.Context, name string) ([]netip.Addr, time.Duration, error) {
	var addrs []netip.Addr
	ttl := r.cfg.MaxTTL
	var errs []error
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		q := new(dns.Msg)
		q.SetQuestion(name, qtype)
		resp, err := r.ask(ctx, q)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rr := range resp.Answer {
			var ip netip.Addr
			switch rr := rr.(type) {
			case *dns.A:
				ip, _ = netip.AddrFromSlice(rr.A.To4())
			case *dns.AAAA:
				ip, _ = netip.AddrFromSlice(rr.AAAA.To16())
			default:
				continue // CNAMEs: the upstream resolver follows them and adds the addresses
			}
			addrs = append(addrs, ip.Unmap())
			ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
		}
	}
	if len(addrs) == 0 {
		if len(errs) > 0 {
			return nil, 0, errors.Join(errs...)
		}
		return nil, 0, fmt.Errorf("%s: no address", strings.TrimSuffix(name, "."))
	}
	return addrs, max(ttl, r.cfg.MinTTL), nil
}

func (r *Resolver) ask(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	var errs []error
	for _, up := range r.cfg.Upstreams {
		resp, err := exchange(ctx, q, up.String(), r.cfg.Timeout, nil)
		switch {
		case err != nil:
			errs = append(errs, err)
		case resp.Rcode == dns.RcodeNameError:
			return nil, fmt.Errorf("%s: no such host", strings.TrimSuffix(q.Question[0].Name, "."))
		case resp.Rcode != dns.RcodeSuccess:
			errs = append(errs, fmt.Errorf("%s: %s from %s", strings.TrimSuffix(q.Question[0].Name, "."), dns.RcodeToString[resp.Rcode], up))
		default:
			return resp, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

func (r *Resolver) store(name string, c cached) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= r.cfg.MaxEntries {
		now := r.cfg.Clock()
		for k, v := range r.cache {
			if !now.Before(v.expires) {
				delete(r.cache, k)
			}
		}
		for k := range r.cache {
			if len(r.cache) < r.cfg.MaxEntries {
				break
			}
			delete(r.cache, k)
		}
	}
	r.cache[name] = c
}

// Len is the number of names cached.
func (r *Resolver) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cache)
}

// ReadResolvConf reads the nameservers of a resolv.conf (the node's resolvers) as addresses
// with their port.
func ReadResolvConf(path string) ([]netip.AddrPort, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, err
	}
	var out []netip.AddrPort
	for _, s := range cc.Servers {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%s: nameserver %q: %w", path, s, err)
		}
		port, err := netip.ParseAddrPort(netip.AddrPortFrom(ip, 53).String())
		if err != nil {
			return nil, err
		}
		if cc.Port != "" && cc.Port != "53" {
			var p uint16
			if _, err := fmt.Sscan(cc.Port, &p); err != nil {
				return nil, fmt.Errorf("%s: port %q: %w", path, cc.Port, err)
			}
			port = netip.AddrPortFrom(ip, p)
		}
		out = append(out, port)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no nameserver", path)
	}
	return out, nil
}
