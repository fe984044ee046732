package extauthz

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/goambient/goambient/policies/extprovider"
)

type httpClient struct {
	p *extprovider.Provider
	c *http.Client
}

func newHTTP(p *extprovider.Provider, o Options) *httpClient {
	dial := (&net.Dialer{Timeout: p.Timeout}).DialContext
	if o.Dial != nil {
		dial = func(ctx context.Context, _, address string) (net.Conn, error) { return o.Dial(ctx, address) }
	}
	return &httpClient{p: p, c: &http.Client{
		Transport: &http.Transport{
			Proxy: nil, DialContext: dial,
			MaxIdleConnsPerHost: 16, IdleConnTimeout: 60 * time.Second, MaxResponseHeaderBytes: MaxAnswer,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (h *httpClient) Close() error {
	h.c.CloseIdleConnections()
	return nil
}

// alwaysSent are the headers Envoy adds to the allowed ones of a check request.
var alwaysSent = []string{"host", "authorization", "content-length"}

// Check sends Envoy's HTTP authorization request — the request's method, pathPrefix + its
// path, its headers (those includeRequestHeadersInCheck allows, when set, and the ones Envoy
// always sends), the additional headers, no body unless configured — and applies the answer:
// 200 allows (headersToUpstreamOnAllow copied onto the request), any other status denies
// with the provider's status, body and the headers headersToDownstreamOnDeny allows (all of
// them when unset); a transport error or timeout is an error.
func (h *httpClient) Check(ctx context.Context, r *Request) Result {
	ctx, cancel := context.WithTimeout(ctx, h.p.Timeout)
	defer cancel()
	var body io.Reader
	n := 0
	if h.p.MaxRequestBytes > 0 && len(r.Body) > 0 {
		b := r.Body
		if m := min(int(h.p.MaxRequestBytes), MaxBody); len(b) > m {
			b = b[:m]
		}
		body, n = strings.NewReader(string(b)), len(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+h.p.Address()+h.p.PathPrefix+r.Path, body)
	if err != nil {
		return onError(h.p, fmt.Errorf("ext_authz provider %s: %w", h.p.Name, err))
	}
	req.Host = r.Host
	req.ContentLength = int64(n)
	for _, hv := range r.Headers {
		name := hv[0]
		if name == "host" || name == "content-length" || name == "transfer-encoding" || name == "connection" {
			continue
		}
		if len(h.p.IncludeRequestHeadersInCheck) > 0 && !headerMatch(h.p.IncludeRequestHeadersInCheck, name) && !headerMatch(alwaysSent, name) {
			continue
		}
		req.Header.Add(name, hv[1])
	}
	for k, v := range h.p.IncludeAdditionalHeadersInCheck {
		req.Header.Set(k, v)
	}
	resp, err := h.c.Do(req)
	if err != nil {
		return onError(h.p, fmt.Errorf("ext_authz provider %s: %w", h.p.Name, err))
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxAnswer))
		res := Result{Allowed: true}
		for k, vs := range resp.Header {
			name := lowerName(k)
			for _, v := range vs {
				if headerMatch(h.p.HeadersToUpstreamOnAllow, name) {
					res.Upstream = append(res.Upstream, [2]string{name, v})
				}
				if headerMatch(h.p.HeadersToDownstreamOnAllow, name) {
					res.Downstream = append(res.Downstream, [2]string{name, v})
				}
			}
		}
		return res
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer))
	if err != nil {
		return onError(h.p, fmt.Errorf("ext_authz provider %s: reading its answer: %w", h.p.Name, err))
	}
	res := Result{Status: resp.StatusCode, Body: string(b), Details: DetailsDenied}
	if res.Status < 200 || res.Status > 599 {
		res.Status = http.StatusForbidden
	}
	for k, vs := range resp.Header {
		name := lowerName(k)
		if name == "content-length" || name == "transfer-encoding" || name == "connection" || name == "date" {
			continue
		}
		if len(h.p.HeadersToDownstreamOnDeny) > 0 && !headerMatch(h.p.HeadersToDownstreamOnDeny, name) {
			continue
		}
		for _, v := range vs {
			res.Headers = append(res.Headers, [2]string{name, v})
		}
	}
	return res
}

func lowerName(s string) string { return strings.ToLower(s) }
