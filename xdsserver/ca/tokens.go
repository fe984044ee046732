package ca

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"
)

// TokenFile authenticates callers by bootstrap tokens listed in a file, for runs without
// Kubernetes. One token a line, then the kind of caller and who it is, separated by blanks;
// blank lines and lines starting with # are ignored:
//
//	# token                            kind      who
//	6f1c0d9e6a0b4c6f9b1e2d3c4b5a6978   ztunnel   node-a           (a ztunnel on node node-a)
//	0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d   waypoint  handson/waypoint (Gateway namespace/name)
//	a1b2c3d4e5f60718293a4b5c6d7e8f90   workload  handson/sleep    (namespace/service account)
//
// Tokens must be unique and at least 16 characters. The file is read once.
type TokenFile struct {
	callers map[[32]byte]Caller // by sha256 of the token
}

// MinTokenLength is the shortest bootstrap token accepted.
const MinTokenLength = 16

// LoadTokenFile reads a bootstrap token file.
func LoadTokenFile(path string) (*TokenFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ca: bootstrap tokens: %w", err)
	}
	t, err := ParseTokens(data)
	if err != nil {
		return nil, fmt.Errorf("ca: bootstrap tokens %s: %w", path, err)
	}
	return t, nil
}

// ParseTokens reads the content of a bootstrap token file.
func ParseTokens(data []byte) (*TokenFile, error) {
	t := &TokenFile{callers: map[[32]byte]Caller{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	var errs []error
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			errs = append(errs, fmt.Errorf("line %d: want \"<token> <kind> <who>\", got %d fields", n, len(f)))
			continue
		}
		tok, kind, who := f[0], f[1], f[2]
		if len(tok) < MinTokenLength {
			errs = append(errs, fmt.Errorf("line %d: token: shorter than %d characters", n, MinTokenLength))
			continue
		}
		var c Caller
		switch kind {
		case "ztunnel":
			if strings.Contains(who, "/") {
				errs = append(errs, fmt.Errorf("line %d: ztunnel: want a node name, got %q", n, who))
				continue
			}
			c = Caller{Kind: KindZtunnel, Node: who}
		case "waypoint", "workload":
			ns, name, ok := strings.Cut(who, "/")
			if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
				errs = append(errs, fmt.Errorf("line %d: %s: want namespace/name, got %q", n, kind, who))
				continue
			}
			c = Caller{Kind: KindWaypoint, Namespace: ns, Name: name}
			if kind == "workload" {
				c.Kind = KindWorkload
			}
		default:
			errs = append(errs, fmt.Errorf("line %d: kind: want ztunnel, waypoint or workload, got %q", n, kind))
			continue
		}
		h := sha256.Sum256([]byte(tok))
		if _, dup := t.callers[h]; dup {
			errs = append(errs, fmt.Errorf("line %d: token: already given on an earlier line", n))
			continue
		}
		t.callers[h] = c
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return t, nil
}

// Len is the number of tokens.
func (t *TokenFile) Len() int { return len(t.callers) }

// Authenticate returns the caller of token. Tokens are looked up by their SHA-256, so the
// time taken does not depend on how much of a guessed token is right.
func (t *TokenFile) Authenticate(_ context.Context, token string) (*Caller, error) {
	c, ok := t.callers[sha256.Sum256([]byte(token))]
	if !ok {
		return nil, errors.New("unknown bootstrap token")
	}
	return &c, nil
}
