// Package opaserver is an envoy.service.auth.v3.Authorization gRPC server deciding with a Rego policy on OPA's Go API, with the input and decision shapes of OPA's Envoy plugin (opa-envoy-plugin, which the module proxy here does not serve): the CUSTOM provider the tests and the demo run.
package opaserver

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/open-policy-agent/opa/v1/rego"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
)

// DefaultQuery is opa-envoy-plugin's default decision path.
const DefaultQuery = "data.envoy.authz.allow"

// Server answers Check with the decision of its policy. Input (as opa-envoy-plugin):
// input.attributes (the CheckRequest's AttributeContext in protojson), input.parsed_path (the
// path's segments), input.parsed_query. Decision: a boolean, or an object with allowed,
// headers, body, http_status, request_headers_to_remove, response_headers_to_add.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	pq  rego.PreparedEvalQuery
	srv *grpc.Server
}

// New compiles module (Rego) for query (DefaultQuery when "").
func New(ctx context.Context, module, query string) (*Server, error) {
	if query == "" {
		query = DefaultQuery
	}
	pq, err := rego.New(rego.Query(query), rego.Module("policy.rego", module)).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("opaserver: %w", err)
	}
	s := &Server{pq: pq}
	s.srv = grpc.NewServer(grpc.MaxRecvMsgSize(1<<20), grpc.MaxConcurrentStreams(256))
	authv3.RegisterAuthorizationServer(s.srv, s)
	return s, nil
}

// Serve serves on l until Stop.
func (s *Server) Serve(l net.Listener) error { return s.srv.Serve(l) }

// Stop stops serving and closes the connections.
func (s *Server) Stop() { s.srv.Stop() }

// Check evaluates the policy; an evaluation error is an RPC error (the proxy's statusOnError
// or failOpen then decides).
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	input, err := Input(req)
	if err != nil {
		return nil, err
	}
	rs, err := s.pq.Eval(ctx, rego.EvalInput(input))
	if err != nil {
		return nil, fmt.Errorf("opaserver: eval: %w", err)
	}
	allowed := false
	var d decision
	if len(rs) > 0 && len(rs[0].Expressions) > 0 {
		switch v := rs[0].Expressions[0].Value.(type) {
		case bool:
			allowed = v
		case map[string]any:
			b, _ := json.Marshal(v)
			if err := json.Unmarshal(b, &d); err != nil {
				return nil, fmt.Errorf("opaserver: decision: %w", err)
			}
			allowed = d.Allowed
		default:
			return nil, fmt.Errorf("opaserver: decision is a %T, want a boolean or an object", v)
		}
	}
	if allowed {
		ok := &authv3.OkHttpResponse{HeadersToRemove: d.RemoveHeaders}
		for k, v := range d.Headers {
			ok.Headers = append(ok.Headers, &core.HeaderValueOption{Header: &core.HeaderValue{Key: k, Value: v}})
		}
		for k, v := range d.ResponseHeaders {
			ok.ResponseHeadersToAdd = append(ok.ResponseHeadersToAdd, &core.HeaderValueOption{Header: &core.HeaderValue{Key: k, Value: v}})
		}
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok}}, nil
	}
	denied := &authv3.DeniedHttpResponse{Body: d.Body, Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden}}
	if d.Status != 0 {
		denied.Status.Code = typev3.StatusCode(d.Status)
	}
	for k, v := range d.Headers {
		denied.Headers = append(denied.Headers, &core.HeaderValueOption{Header: &core.HeaderValue{Key: k, Value: v}})
	}
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: denied}}, nil
}

type decision struct {
	Allowed         bool              `json:"allowed"`
	Headers         map[string]string `json:"headers"`
	Body            string            `json:"body"`
	Status          int               `json:"http_status"`
	RemoveHeaders   []string          `json:"request_headers_to_remove"`
	ResponseHeaders map[string]string `json:"response_headers_to_add"`
}

// Input is the policy's input for a check, as opa-envoy-plugin builds it.
func Input(req *authv3.CheckRequest) (map[string]any, error) {
	js, err := protojson.Marshal(req.GetAttributes())
	if err != nil {
		return nil, err
	}
	var attrs map[string]any
	if err := json.Unmarshal(js, &attrs); err != nil {
		return nil, err
	}
	p := req.GetAttributes().GetRequest().GetHttp().GetPath()
	path, query, _ := strings.Cut(p, "?")
	segs := []any{}
	for _, s := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
		if s != "" {
			if u, err := url.PathUnescape(s); err == nil {
				s = u
			}
			segs = append(segs, s)
		}
	}
	pq := map[string]any{}
	if q, err := url.ParseQuery(query); err == nil {
		for k, vs := range q {
			l := make([]any, len(vs))
			for i, v := range vs {
				l[i] = v
			}
			pq[k] = l
		}
	}
	return map[string]any{"attributes": attrs, "parsed_path": segs, "parsed_query": pq,
		"version": map[string]any{"encoding": "protojson", "ext_authz": "v3"}}, nil
}
