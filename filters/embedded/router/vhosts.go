package router

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// Hosts is a route configuration with several virtual hosts (an ingress gateway's), each
// selected by the request's host as Envoy selects them: an exact domain, else the longest
// suffix wildcard (*.example.com), else the longest prefix wildcard (example.*), else "*".
// The port is taken off the host first ("host:*" domains are the same as "host" then).
type Hosts struct {
	Name   string
	exact  map[string]*Table
	suffix []wildcard // longest first
	prefix []wildcard // longest first
	any    *Table
}

type wildcard struct {
	part  string // what the host must end (suffix) or start (prefix) with
	table *Table
}

// CompileHosts compiles every virtual host of a route configuration.
func CompileHosts(rc *route.RouteConfiguration) (*Hosts, error) {
	h := &Hosts{Name: rc.GetName(), exact: map[string]*Table{}}
	var errs []error
	for _, vh := range rc.GetVirtualHosts() {
		t, err := CompileVirtualHost(rc, vh)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, d := range vh.GetDomains() {
			d = strings.ToLower(d)
			if strings.HasSuffix(d, ":*") {
				continue // the port is ignored: the same as the domain without it
			}
			switch {
			case d == "*":
				h.any = t
			case strings.HasPrefix(d, "*"):
				h.suffix = append(h.suffix, wildcard{d[1:], t})
			case strings.HasSuffix(d, "*"):
				h.prefix = append(h.prefix, wildcard{d[:len(d)-1], t})
			default:
				if _, dup := h.exact[d]; dup {
					errs = append(errs, fmt.Errorf("route configuration %s: domain %q is in two virtual hosts", rc.GetName(), d))
				}
				h.exact[d] = t
			}
		}
	}
	longest := func(a, b wildcard) int { return len(b.part) - len(a.part) }
	slices.SortStableFunc(h.suffix, longest)
	slices.SortStableFunc(h.prefix, longest)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return h, nil
}

// Select returns the virtual host of an authority (host or host:port), nil when none matches
// (Envoy answers 404).
func (h *Hosts) Select(authority string) *Table {
	host := strings.ToLower(authority)
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	if t := h.exact[host]; t != nil {
		return t
	}
	for _, w := range h.suffix {
		if len(host) > len(w.part) && strings.HasSuffix(host, w.part) {
			return w.table
		}
	}
	for _, w := range h.prefix {
		if len(host) > len(w.part) && strings.HasPrefix(host, w.part) {
			return w.table
		}
	}
	return h.any
}
