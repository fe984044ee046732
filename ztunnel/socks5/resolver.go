package socks5

import (
	"context"
	"errors"
	"net"
	"net/netip"
)

// Resolver turns the domain name of a request into one address. The ztunnel's resolver knows
// the mesh's names (handson, handson.handson, handson.handson.svc.cluster.local → the Service
// VIP) and falls back to SystemResolver for the rest (see Fallback).
type Resolver interface {
	Resolve(ctx context.Context, name string) (netip.Addr, error)
}

// ResolverFunc adapts a function to Resolver.
type ResolverFunc func(ctx context.Context, name string) (netip.Addr, error)

// Resolve calls f.
func (f ResolverFunc) Resolve(ctx context.Context, name string) (netip.Addr, error) {
	return f(ctx, name)
}

// SystemResolver resolves through a *net.Resolver (net.DefaultResolver when nil) and returns
// one address: the first IPv4 one if there is any, else the first. IP literals resolve to themselves.
type SystemResolver struct {
	Resolver *net.Resolver
}

// Resolve looks name up.
func (s SystemResolver) Resolve(ctx context.Context, name string) (netip.Addr, error) {
	r := s.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	addrs, err := r.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(addrs) == 0 {
		return netip.Addr{}, &net.DNSError{Err: "no addresses", Name: name, IsNotFound: true}
	}
	for _, a := range addrs {
		if a.Unmap().Is4() {
			return a.Unmap(), nil
		}
	}
	return addrs[0].Unmap(), nil
}

// Fallback asks each resolver in turn and returns the first answer; when all fail it returns
// their errors joined.
func Fallback(rs ...Resolver) Resolver {
	return ResolverFunc(func(ctx context.Context, name string) (netip.Addr, error) {
		var errs []error
		for _, r := range rs {
			a, err := r.Resolve(ctx, name)
			if err == nil {
				return a, nil
			}
			errs = append(errs, err)
		}
		if len(errs) == 0 {
			return netip.Addr{}, &net.DNSError{Err: "no resolver", Name: name, IsNotFound: true}
		}
		return netip.Addr{}, errors.Join(errs...)
	})
}
