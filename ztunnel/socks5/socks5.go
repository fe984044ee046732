// Package socks5 is the ztunnel's SOCKS5 listener (RFC 1928: no authentication, CONNECT only), which resolves names through an injected Resolver and hands each parsed request to a Handler that dials, replies and copies.
package socks5

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// DefaultHandshakeTimeout bounds the greeting and the request when Server.HandshakeTimeout is zero.
const DefaultHandshakeTimeout = 10 * time.Second

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = errors.New("socks5: server closed")

// Handler serves one parsed CONNECT request. It dials req.Dest and then either returns an
// error — the server then replies with ReplyFor(err) and closes the client connection — or
// calls req.Accept, which sends the success reply and hands back the client connection for
// the byte copy. The server closes the client connection when ServeSOCKS5 returns; an error
// returned after Accept is only logged.
type Handler interface {
	ServeSOCKS5(ctx context.Context, req *Request) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req *Request) error

// ServeSOCKS5 calls f.
func (f HandlerFunc) ServeSOCKS5(ctx context.Context, req *Request) error { return f(ctx, req) }

// Request is one CONNECT request, its destination resolved.
type Request struct {
	Client   netip.AddrPort // the SOCKS client's address
	Dest     netip.AddrPort // where to connect (a resolved name, or the address the client sent)
	Hostname string         // the domain name the client sent; empty when it sent an address

	conn    net.Conn
	replied bool
}

// Accept sends the success reply with bound as BND.ADDR:BND.PORT (0.0.0.0:0 when bound is the
// zero value) and returns the client connection, ready for the byte copy. It may be called once.
func (r *Request) Accept(bound netip.AddrPort) (net.Conn, error) {
	if r.replied {
		return nil, errors.New("socks5: request already answered")
	}
	r.replied = true
	if err := writeReply(r.conn, ReplySucceeded, bound); err != nil {
		return nil, fmt.Errorf("socks5: write success reply: %w", err)
	}
	return r.conn, nil
}

// Replied reports whether Accept has been called.
func (r *Request) Replied() bool { return r.replied }

// Server accepts SOCKS5 clients on the listeners given to Serve. Its zero value is not usable:
// Handler is required. Listen only where told: the ztunnel serves 127.0.0.1:15080.
type Server struct {
	Handler          Handler
	Resolver         Resolver      // for domain names; nil: a request with a name gets "host unreachable"
	HandshakeTimeout time.Duration // greeting + request; zero means DefaultHandshakeTimeout
	Logger           *slog.Logger  // nil: discard

	mu        sync.Mutex
	ctx       context.Context
	cancel    context.CancelFunc
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
	wg        sync.WaitGroup
}

func (s *Server) init() {
	if s.ctx == nil {
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[net.Conn]struct{}{}
	}
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Serve accepts connections on ln until the server is closed (it then returns ErrServerClosed)
// or ln fails. It closes ln on return.
func (s *Server) Serve(ln net.Listener) error {
	if s.Handler == nil {
		return errors.New("socks5: Server.Handler is nil")
	}
	s.mu.Lock()
	s.init()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	s.log().Info("listener established", "address", ln.Addr().String(), "component", "socks5")
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if transientAcceptError(err) {
				// Out of file descriptors and the like: wait a little and go on.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log().Warn("accept failed", "component", "socks5", "error", err.Error(), "retry_in", backoff.String())
				select {
				case <-time.After(backoff):
					continue
				case <-s.ctx.Done():
					return ErrServerClosed
				}
			}
			return err
		}
		backoff = 0
		if !s.track(c) {
			c.Close()
			return ErrServerClosed
		}
		go s.serveConn(c)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// serveConn runs accept → parse → (resolve) → handler (dial → reply → copy) for one client.
func (s *Server) serveConn(c net.Conn) {
	defer s.untrack(c)
	defer c.Close()
	client := addrPortOf(c.RemoteAddr())
	log := s.log()

	timeout := s.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	if err := negotiate(c); err != nil {
		log.Debug("socks5 handshake failed", "src.addr", client.String(), "error", err.Error())
		return
	}
	raw, err := readRequest(c)
	if err != nil {
		log.Debug("socks5 handshake failed", "src.addr", client.String(), "error", err.Error())
		return
	}

	req := &Request{Client: client, conn: c}
	if raw.host == "" {
		req.Dest = netip.AddrPortFrom(raw.addr, raw.port)
	} else {
		addr, err := s.resolve(raw.host)
		if err != nil {
			log.Warn("socks5 name not resolved", "src.addr", client.String(), "host", raw.host, "error", err.Error())
			_ = writeReply(c, ReplyHostUnreachable, netip.AddrPort{})
			return
		}
		req.Dest = netip.AddrPortFrom(addr, raw.port)
		if _, perr := netip.ParseAddr(raw.host); perr != nil {
			req.Hostname = raw.host
		}
	}
	// The handshake is over: the handler owns the timing from here (its dial has its own bound).
	_ = c.SetDeadline(time.Time{})

	err = s.Handler.ServeSOCKS5(s.ctx, req)
	switch {
	case err != nil && !req.replied:
		code := ReplyFor(err)
		_ = c.SetWriteDeadline(time.Now().Add(timeout))
		_ = writeReply(c, code, netip.AddrPort{})
		log.Debug("socks5 connect failed", "src.addr", client.String(), "dst.addr", req.Dest.String(), "reply", code.String(), "error", err.Error())
	case err != nil:
		log.Debug("socks5 connection ended with an error", "src.addr", client.String(), "dst.addr", req.Dest.String(), "error", err.Error())
	case !req.replied:
		_ = c.SetWriteDeadline(time.Now().Add(timeout))
		_ = writeReply(c, ReplyGeneralFailure, netip.AddrPort{})
		log.Debug("socks5 handler returned without answering", "src.addr", client.String(), "dst.addr", req.Dest.String())
	}
}

func (s *Server) resolve(host string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap(), nil
	}
	if host == "" {
		return netip.Addr{}, errors.New("empty domain name")
	}
	if s.Resolver == nil {
		return netip.Addr{}, errors.New("no resolver for domain names")
	}
	timeout := s.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	a, err := s.Resolver.Resolve(ctx, host)
	if err != nil {
		return netip.Addr{}, err
	}
	if !a.IsValid() {
		return netip.Addr{}, fmt.Errorf("resolver returned no address for %q", host)
	}
	return a.Unmap(), nil
}

// Close stops the listeners, cancels the context given to handlers, closes every client
// connection and waits for their goroutines to end.
func (s *Server) Close() error {
	s.shutdownListeners()
	s.mu.Lock()
	s.cancel()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// Shutdown stops the listeners and waits for open connections to end on their own; when ctx
// is done first it closes them as Close does and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownListeners()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.mu.Lock()
		s.cancel()
		s.mu.Unlock()
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

func (s *Server) shutdownListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.init()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
}

// addrPortOf returns the address of a TCP (or other IP) endpoint, IPv4-mapped addresses unmapped.
func addrPortOf(a net.Addr) netip.AddrPort {
	switch v := a.(type) {
	case *net.TCPAddr:
		ap := v.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case nil:
		return netip.AddrPort{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// transientAcceptError reports whether Accept may succeed if tried again later.
func transientAcceptError(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
