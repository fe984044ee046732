package server

import (
	"context"
	"net/http"
	"strconv"

	"github.com/goambient/goambient/filters/embedded/host"
	"github.com/goambient/goambient/filters/jwtauthn"
)

// grpcUnauthenticated is the grpc-status Envoy maps a 401 to.
const grpcUnauthenticated = 16

// authenticate runs the chain's jwt_authn filter: the verified payloads as dynamic metadata
// for the authz filter and the header changes to apply once it let the request go on, or
// (done) the local reply it sent and whether the stream goes on.
func (s *Server) authenticate(ctx context.Context, x *exchange, req *http.Request) (md map[string]map[string]any, res jwtauthn.Result, done, keep bool) {
	j := x.table.JWT
	if j == nil {
		return nil, res, false, false
	}
	res = j.Decode(ctx, x.hreq)
	if r := res.Reply; r != nil {
		hdr := make([]host.Header, 0, len(r.Headers)+3)
		for _, h := range r.Headers {
			hdr = append(hdr, host.Header{Name: h[0], Value: h[1]})
		}
		status, body := r.Status, r.Body
		if isGRPC(req) {
			// Envoy's gRPC local reply: 200, grpc-status from the HTTP status, no body.
			code := grpcUnauthenticated
			if status == http.StatusForbidden {
				code = 7
			}
			hdr = append(hdr, host.Header{Name: "content-type", Value: "application/grpc"},
				host.Header{Name: "grpc-status", Value: strconv.Itoa(code)}, host.Header{Name: "grpc-message", Value: body})
			status, body = http.StatusOK, ""
		}
		return nil, res, true, x.localReply(status, body, r.Details, 0, hdr)
	}
	if res.Payloads != nil {
		md = map[string]map[string]any{jwtauthn.Name: res.Payloads}
	}
	return md, res, false, false
}
