package jwtauthn

import "net/http"

// httpCookieReader reads the request's cookies with net/http's parser.
type httpCookieReader struct{ h http.Header }

type cookie struct{ name, value string }

func (c *httpCookieReader) cookies() []cookie {
	r := http.Request{Header: c.h}
	var out []cookie
	for _, ck := range r.Cookies() {
		out = append(out, cookie{ck.Name, ck.Value})
	}
	return out
}
