package jwtauthn

import "sync"

// RemoteCache shares one Remote per JWKS URI across compiled configs, so that a new xDS
// config keeps the keys already fetched. Options of the first use of a URI win until Retain
// drops it.
type RemoteCache struct {
	mu sync.Mutex
	m  map[string]*Remote
}

// Get returns the Remote of uri, made with o when new.
func (c *RemoteCache) Get(uri string, o RemoteOptions) *Remote {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]*Remote{}
	}
	r := c.m[uri]
	if r == nil || r.o.Timeout != o.Timeout && o.Timeout > 0 || r.o.CacheDuration != o.CacheDuration && o.CacheDuration > 0 {
		r = NewRemote(uri, o)
		c.m[uri] = r
	}
	return r
}

// Retain forgets the URIs not in keep.
func (c *RemoteCache) Retain(keep map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for u := range c.m {
		if !keep[u] {
			delete(c.m, u)
		}
	}
}
