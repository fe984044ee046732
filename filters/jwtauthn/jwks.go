package jwtauthn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Bounds of a JWKS document and its fetch.
const (
	// MaxJWKSBytes is the largest JWKS document read; a larger one is refused whole.
	MaxJWKSBytes = 256 << 10
	// MaxKeys is the most keys kept from one JWKS document.
	MaxKeys = 64
	// DefaultFetchTimeout is the fetch timeout when the http_uri has none (istiod's 5s).
	DefaultFetchTimeout = 5 * time.Second
	// DefaultCacheDuration is how long fetched keys are used before a refetch (Envoy's default,
	// 600s; istiod sets 300s).
	DefaultCacheDuration = 600 * time.Second
)

// ParseJWKS decodes a JWKS document, keeping the public keys go-jose understands (as Envoy
// skips keys it cannot use) and failing when none is left.
func ParseJWKS(data []byte) ([]jose.JSONWebKey, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("jwks is not a JSON key set: %v", err)
	}
	var keys []jose.JSONWebKey
	var firstErr error
	for i, raw := range doc.Keys {
		if len(keys) == MaxKeys {
			break
		}
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(raw); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("keys[%d]: %v", i, err)
			}
			continue
		}
		if _, sym := k.Key.([]byte); !sym && !k.IsPublic() {
			k = k.Public() // private material is never used to verify
		}
		if !k.Valid() {
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		if firstErr != nil {
			return nil, fmt.Errorf("jwks has no usable key: %v", firstErr)
		}
		return nil, errors.New("jwks has no usable key")
	}
	return keys, nil
}

// keySource gives a provider's keys.
type keySource interface {
	// keys returns the keys to verify with. kid is the token's key id ("" for none): a
	// remote source refetches (rate limited) when no key has it. An error means no keys.
	keys(ctx context.Context, kid string) ([]jose.JSONWebKey, error)
}

type staticKeys []jose.JSONWebKey

func (s staticKeys) keys(context.Context, string) ([]jose.JSONWebKey, error) { return s, nil }

// RemoteOptions tune a remote JWKS.
type RemoteOptions struct {
	Client        *http.Client  // nil: a client with no proxy and the fetch timeout
	Timeout       time.Duration // one fetch's bound (http_uri.timeout); 0: DefaultFetchTimeout
	CacheDuration time.Duration // 0: DefaultCacheDuration
	// MinRefetch is the least time between two fetches caused by an unknown key id or a failed
	// fetch (0: 5s): a flood of tokens with random kids cannot make the issuer a target.
	MinRefetch time.Duration
	Now        func() time.Time
	Log        *slog.Logger
}

// Remote is a JWKS fetched from a URI, cached and refreshed: one fetch at a time whatever the
// number of waiting requests (each waits at most for its context), bounded in time and size;
// a failed refresh keeps the last good keys, a failed first fetch fails the requests waiting
// (fail closed). It is safe for concurrent use.
type Remote struct {
	uri string
	o   RemoteOptions

	mu        sync.Mutex
	cur       []jose.JSONWebKey
	fetched   time.Time     // when cur was fetched
	attempted time.Time     // the last fetch's start
	lastErr   error         // the last fetch's error, nil after a success
	inflight  chan struct{} // closed when the running fetch ends; nil when none runs
}

// NewRemote returns the JWKS at uri; nothing is fetched before the first token needs it.
func NewRemote(uri string, o RemoteOptions) *Remote {
	if o.Timeout <= 0 {
		o.Timeout = DefaultFetchTimeout
	}
	if o.CacheDuration <= 0 {
		o.CacheDuration = DefaultCacheDuration
	}
	if o.MinRefetch <= 0 {
		o.MinRefetch = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: o.Timeout, Transport: &http.Transport{
			Proxy: nil, MaxIdleConns: 2, IdleConnTimeout: 30 * time.Second,
			ResponseHeaderTimeout: o.Timeout, MaxResponseHeaderBytes: 16 << 10,
		}}
	}
	return &Remote{uri: uri, o: o}
}

// URI is where the keys come from.
func (r *Remote) URI() string { return r.uri }

func (r *Remote) keys(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	for {
		r.mu.Lock()
		now := r.o.Now()
		fresh := r.cur != nil && now.Sub(r.fetched) < r.o.CacheDuration
		known := kid == "" || hasKid(r.cur, kid)
		mayRefetch := now.Sub(r.attempted) >= r.o.MinRefetch
		switch {
		case fresh && (known || !mayRefetch):
			keys := r.cur
			r.mu.Unlock()
			return keys, nil
		case r.inflight == nil && !mayRefetch:
			// A fetch failed (or just ran) a moment ago: answer from what there is.
			keys, err := r.cur, r.lastErr
			r.mu.Unlock()
			if keys != nil {
				return keys, nil
			}
			if err == nil {
				err = errors.New("jwks fetch failed")
			}
			return nil, err
		}
		wait := r.inflight
		if wait == nil {
			wait = make(chan struct{})
			r.inflight, r.attempted = wait, now
			go r.fetch(wait)
		}
		r.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, fmt.Errorf("jwks fetch from %s: %w", r.uri, ctx.Err())
		}
		r.mu.Lock()
		keys, err, fetched := r.cur, r.lastErr, r.fetched
		r.mu.Unlock()
		if err != nil && keys == nil {
			return nil, err
		}
		if keys != nil && (kid == "" || hasKid(keys, kid) || r.o.Now().Sub(fetched) < r.o.CacheDuration) {
			return keys, nil
		}
	}
}

// fetch runs one bounded fetch, detached from the requests waiting for it.
func (r *Remote) fetch(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), r.o.Timeout)
	defer cancel()
	keys, err := r.get(ctx)
	r.mu.Lock()
	if err != nil {
		r.lastErr = err
		r.o.Log.Warn("jwks fetch failed; keeping the last good keys", "uri", r.uri, "error", err, "have_keys", r.cur != nil)
	} else {
		r.cur, r.fetched, r.lastErr = keys, r.o.Now(), nil
	}
	r.inflight = nil
	r.mu.Unlock()
	close(done)
}

func (r *Remote) get(ctx context.Context) ([]jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.uri, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := r.o.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("jwks fetch from %s: %w", r.uri, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jwks fetch from %s: status %d", r.uri, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("jwks fetch from %s: %w", r.uri, err)
	}
	if len(body) > MaxJWKSBytes {
		return nil, fmt.Errorf("jwks fetch from %s: document larger than %d bytes", r.uri, MaxJWKSBytes)
	}
	keys, err := ParseJWKS(body)
	if err != nil {
		return nil, fmt.Errorf("jwks fetch from %s: %w", r.uri, err)
	}
	return keys, nil
}

func hasKid(keys []jose.JSONWebKey, kid string) bool {
	for i := range keys {
		if keys[i].KeyID == kid {
			return true
		}
	}
	return false
}
