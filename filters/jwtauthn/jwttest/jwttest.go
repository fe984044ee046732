// Package jwttest is a test issuer: it signs JWTs with keys it can rotate and serves its JWKS over HTTP, for the tests of the JWT path (a real peer for the verifier: a JWKS endpoint whose keys change).
package jwttest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Issuer signs tokens as Iss with its current key (ES256) and serves its public keys.
type Issuer struct {
	Iss string

	mu    sync.Mutex
	keys  []*jose.JSONWebKey // private; the last one signs
	n     int
	hits  atomic.Int64
	serve func(w http.ResponseWriter, r *http.Request) bool // non-nil: replaces the JWKS answer when it returns true
}

// New returns an issuer with one key.
func New(iss string) *Issuer {
	i := &Issuer{Iss: iss}
	i.Rotate(false)
	return i
}

// Rotate adds a new signing key; with drop, the old keys are no longer published.
func (i *Issuer) Rotate(drop bool) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.n++
	jk := &jose.JSONWebKey{Key: k, KeyID: fmt.Sprintf("key-%d", i.n), Algorithm: string(jose.ES256), Use: "sig"}
	if drop {
		i.keys = nil
	}
	i.keys = append(i.keys, jk)
}

// JWKS is the public key set as a JSON document.
func (i *Issuer) JWKS() string {
	i.mu.Lock()
	defer i.mu.Unlock()
	var set jose.JSONWebKeySet
	for _, k := range i.keys {
		set.Keys = append(set.Keys, k.Public())
	}
	b, err := json.Marshal(set)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// Sign returns a token with claims (iss is set to Iss unless claims has one, iat and exp an
// hour around now unless set).
func (i *Issuer) Sign(claims map[string]any) string {
	i.mu.Lock()
	k := i.keys[len(i.keys)-1]
	i.mu.Unlock()
	return SignWith(k, i.Iss, claims)
}

// SignWith signs claims with key k (a private JSONWebKey).
func SignWith(k *jose.JSONWebKey, iss string, claims map[string]any) string {
	c := map[string]any{"iss": iss, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()}
	for key, v := range claims {
		if v == nil {
			delete(c, key)
			continue
		}
		c[key] = v
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(k.Algorithm), Key: k},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		panic(err)
	}
	s, err := jwt.Signed(sig).Claims(c).Serialize()
	if err != nil {
		panic(err)
	}
	return s
}

// Forger is a key that no issuer publishes, under the key id kid (an issuer's, to forge its
// tokens).
func Forger(kid string) *jose.JSONWebKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return &jose.JSONWebKey{Key: k, KeyID: kid, Algorithm: string(jose.ES256)}
}

// Hits is how many JWKS requests were served.
func (i *Issuer) Hits() int64 { return i.hits.Load() }

// Override makes f answer JWKS requests while it returns true (nil: normal answers).
func (i *Issuer) Override(f func(w http.ResponseWriter, r *http.Request) bool) {
	i.mu.Lock()
	i.serve = f
	i.mu.Unlock()
}

// ServeHTTP serves the JWKS at any path.
func (i *Issuer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i.hits.Add(1)
	i.mu.Lock()
	f := i.serve
	i.mu.Unlock()
	if f != nil && f(w, r) {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(i.JWKS()))
}
