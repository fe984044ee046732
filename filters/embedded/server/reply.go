package server

import (
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/goambient/goambient/filters/embedded/accesslog"
	"github.com/goambient/goambient/filters/embedded/host"
)

// reply answers the request locally, as Envoy's local replies look (text/plain body,
// content-length, date, server: istio-envoy), with details and flags for the access log.
func (x *exchange) reply(status int, body, details string, flags accesslog.Flags, hdr []host.Header) bool {
	x.e.Flags |= flags
	return x.localReply(status, body, details, 0, hdr)
}

func (x *exchange) localReply(status int, body, details string, flags accesslog.Flags, hdr []host.Header) bool {
	x.s.local.Add(1)
	x.e.Flags |= flags
	x.e.ResponseCode, x.e.ResponseCodeDetails = status, details
	h := http.Header{}
	for _, e := range hdr {
		h.Add(e.Name, e.Value)
	}
	if h.Get("Content-Type") == "" && body != "" {
		h.Set("Content-Type", "text/plain")
	}
	x.e.GRPCStatus = h.Get("Grpc-Status")
	n, err := writeLocalReply(x.bw, x.req, status, body, h, !x.keep)
	x.e.BytesSent = n
	return x.keep && err == nil
}

// writeLocalReply writes an answer made by the waypoint; it returns the body bytes written.
func writeLocalReply(w io.Writer, req *http.Request, status int, body string, h http.Header, closeConn bool) (int64, error) {
	if h == nil {
		h = http.Header{}
	}
	if h.Get("Content-Type") == "" && body != "" {
		h.Set("Content-Type", "text/plain")
	}
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	h.Set("Server", "istio-envoy")
	resp := &http.Response{
		StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, Header: h, Request: req,
		ContentLength: int64(len(body)), Body: io.NopCloser(strings.NewReader(body)), Close: closeConn,
	}
	if err := resp.Write(w); err != nil {
		return 0, err
	}
	if req != nil && req.Method == http.MethodHead {
		return 0, nil
	}
	return int64(len(body)), nil
}

func writeSimple(w io.Writer, status int, body string, closeConn bool) {
	_, _ = writeLocalReply(w, nil, status, body, nil, closeConn)
}
