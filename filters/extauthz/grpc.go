package extauthz

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/goambient/goambient/policies/extprovider"
)

type grpcClient struct {
	p    *extprovider.Provider
	conn *grpc.ClientConn
	c    authv3.AuthorizationClient
}

func newGRPC(p *extprovider.Provider, o Options) (*grpcClient, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxAnswer))}
	if o.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(o.Dial))
	}
	conn, err := grpc.NewClient("passthrough:///"+p.Address(), opts...)
	if err != nil {
		return nil, fmt.Errorf("extauthz: provider %s: %w", p.Name, err)
	}
	return &grpcClient{p: p, conn: conn, c: authv3.NewAuthorizationClient(conn)}, nil
}

func (g *grpcClient) Close() error { return g.conn.Close() }

// Check calls Authorization/Check with Envoy's attribute context and applies the answer: OK
// allows (with its header changes), any other status denies with the denied_response (403
// when it has no status), an RPC failure or timeout is an error.
func (g *grpcClient) Check(ctx context.Context, r *Request) Result {
	ctx, cancel := context.WithTimeout(ctx, g.p.Timeout)
	defer cancel()
	resp, err := g.c.Check(ctx, g.checkRequest(r))
	if err != nil {
		return onError(g.p, fmt.Errorf("ext_authz provider %s: %w", g.p.Name, err))
	}
	if resp.GetStatus().GetCode() == int32(code.Code_OK) {
		res := Result{Allowed: true}
		ok := resp.GetOkResponse()
		for _, h := range ok.GetHeaders() {
			res.Upstream = append(res.Upstream, [2]string{lowerName(h.GetHeader().GetKey()), h.GetHeader().GetValue()})
		}
		res.Remove = append(res.Remove, ok.GetHeadersToRemove()...)
		for _, h := range ok.GetResponseHeadersToAdd() {
			res.Downstream = append(res.Downstream, [2]string{lowerName(h.GetHeader().GetKey()), h.GetHeader().GetValue()})
		}
		return res
	}
	d := resp.GetDeniedResponse()
	res := Result{Status: http.StatusForbidden, Body: d.GetBody(), Details: DetailsDenied}
	if c := int(d.GetStatus().GetCode()); c >= 200 && c <= 599 {
		res.Status = c
	}
	for _, h := range d.GetHeaders() {
		res.Headers = append(res.Headers, [2]string{lowerName(h.GetHeader().GetKey()), h.GetHeader().GetValue()})
	}
	return res
}

// checkRequest is Envoy's AttributeContext for the request.
func (g *grpcClient) checkRequest(r *Request) *authv3.CheckRequest {
	hdrs := make(map[string]string, len(r.Headers)+4)
	for _, h := range r.Headers {
		if old, ok := hdrs[h[0]]; ok {
			hdrs[h[0]] = old + "," + h[1]
		} else {
			hdrs[h[0]] = h[1]
		}
	}
	hdrs[":method"], hdrs[":path"], hdrs[":authority"], hdrs[":scheme"] = r.Method, r.Path, r.Host, r.Scheme
	h := &authv3.AttributeContext_HttpRequest{
		Id: r.ID, Method: r.Method, Headers: hdrs, Path: r.Path, Host: r.Host, Scheme: r.Scheme,
		Protocol: r.Protocol, Size: -1,
	}
	if g.p.MaxRequestBytes > 0 && len(r.Body) > 0 {
		b := r.Body
		if n := min(int(g.p.MaxRequestBytes), MaxBody); len(b) > n {
			b = b[:n]
		}
		if g.p.PackAsBytes {
			h.RawBody = b
		} else {
			h.Body = string(b)
		}
		h.Size = int64(len(r.Body))
		hdrs["content-length"] = strconv.Itoa(len(r.Body))
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:            &authv3.AttributeContext_Peer{Address: socketAddress(r.SourceAddress), Principal: r.SourcePrincipal},
		Destination:       &authv3.AttributeContext_Peer{Address: socketAddress(r.DestinationAddress)},
		Request:           &authv3.AttributeContext_Request{Http: h},
		ContextExtensions: r.ContextExtensions,
	}}
}

func socketAddress(hostport string) *core.Address {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil
	}
	n, _ := strconv.ParseUint(port, 10, 32)
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(n)}}}}
}
