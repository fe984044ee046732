package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/goambient/goambient/filters/extauthz/opaserver"
	"github.com/goambient/goambient/filters/jwtauthn/jwttest"
)

// CallJWT is a bearer token the demo issues for a call with the example's issuer key
// (issuer-key.json), or with a key nobody publishes (Forged).
type CallJWT struct {
	Issuer string         `json:"issuer"`
	Claims map[string]any `json:"claims,omitempty"`
	Forged bool           `json:"forged,omitempty"`
}

// token signs the call's JWT.
func (s *stack) token(j *CallJWT) (string, error) {
	data, err := os.ReadFile(filepath.Join(s.example, "issuer-key.json"))
	if err != nil {
		return "", fmt.Errorf("the example's issuer key: %w", err)
	}
	var k jose.JSONWebKey
	if err := json.Unmarshal(data, &k); err != nil {
		return "", fmt.Errorf("issuer-key.json: %w", err)
	}
	if j.Forged {
		k = *jwttest.Forger(k.KeyID)
	}
	return jwttest.SignWith(&k, j.Issuer, j.Claims), nil
}

// describe is the token as the demo prints it: its claims, and whether it is forged.
func (j *CallJWT) describe() string {
	keys := make([]string, 0, len(j.Claims))
	for k := range j.Claims {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%v", k, j.Claims[k]))
	}
	s := "$TOKEN(" + strings.Join(parts, ",") + ")"
	if j.Forged {
		s = "$FORGED" + s[len("$TOKEN"):]
	}
	return s
}

// serveOPA serves OPA's Envoy Authorization API with the example's opa-policy.rego on l.
func (s *stack) serveOPA(l net.Listener) error {
	rego, err := os.ReadFile(filepath.Join(s.example, "opa-policy.rego"))
	if err != nil {
		return fmt.Errorf("the example's OPA policy: %w", err)
	}
	srv, err := opaserver.New(context.Background(), string(rego), "")
	if err != nil {
		return err
	}
	go func() { _ = srv.Serve(l) }()
	s.stops = append(s.stops, srv.Stop)
	return nil
}
