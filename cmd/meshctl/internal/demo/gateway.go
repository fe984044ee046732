package demo

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/goambient/goambient/xdsserver/model"
)

// outside is Call.From for a client outside the mesh: a plain HTTP client on the machine whose
// request goes to the scenario's ingress gateway's address (its LoadBalancer's), with the URL's
// host as Host.
const outside = "outside"

// gatewayInfo is the scenario's ingress Gateway as the embedded gateway runs it: nobody deploys
// it here, so it gets an address outside the pod and service ranges (as a LoadBalancer's) and
// the identity istiod's deployment would give its pods (<gateway>-istio).
type gatewayInfo struct {
	key, namespace, name, sa string
	ip, nodeID               string
	readyURL, accessLog      string
}

// planGateway finds the scenario's ingress Gateway in the full mesh.
func (s *stack) planGateway(m *model.Mesh) error {
	ns, name, _ := strings.Cut(s.sc.Gateway, "/")
	g := m.IngressGateway(ns, name)
	if g == nil {
		return fmt.Errorf("the scenario's files have no ingress Gateway %s (class istio)", s.sc.Gateway)
	}
	ip := strings.TrimSuffix(s.hosts[""], ".9") + ".8"
	s.gw = &gatewayInfo{key: g.Key(), namespace: ns, name: name, sa: g.ServiceAccount, ip: ip,
		nodeID: fmt.Sprintf("router~%s~%s.%s~%s.svc.%s", ip, name, ns, ns, m.ClusterDomain)}
	return nil
}

// startGateway starts the embedded ingress gateway (cmd/waypoint with a router~ node id) once
// its Gateway is applied, and waits until it has its listeners and routes.
func (s *stack) startGateway(ctx context.Context) error {
	if s.gwProc == nil {
		bin, ok := s.bins.Path["waypoint"]
		if !ok {
			return fmt.Errorf("embedded gateway not available: %v", s.bins.Err["waypoint"])
		}
		if err := run(s.bins.Path["meshctl"], "certs", "issue", "--dir", s.svids, "--ns", s.gw.namespace, "--sa", s.gw.sa); err != nil {
			return err
		}
		ready := s.gw.ip + ":15021"
		s.gw.readyURL = "http://" + ready + "/healthz/ready"
		s.gw.accessLog = filepath.Join(s.dir, "gateway-access.log")
		p, err := startProc("gateway", filepath.Join(s.dir, "gateway.log"), bin,
			"--xds-address", s.xdsAddr, "--node-id", s.gw.nodeID, "--svid-dir", s.svids, "--service-account", s.gw.sa,
			"--ready-listen", ready, "--access-log", s.gw.accessLog)
		if err != nil {
			return err
		}
		s.gwProc = p
		fmt.Fprintf(s.out, "  started %-28s Gateway %s (class istio) at %s, identity spiffe://%s/ns/%s/sa/%s\n", "gateway", s.gw.key, s.gw.ip,
			s.full.TrustDomain, s.gw.namespace, s.gw.sa)
	}
	if err := s.poll(ctx, 20*time.Second, "the gateway's /healthz/ready", s.gwProc, func() bool { return httpOK(s.gw.readyURL) }); err != nil {
		return fmt.Errorf("embedded gateway not available: %w; its last lines:\n  %s", err, strings.Join(s.gwProc.out.tail(4), "\n  "))
	}
	return nil
}

// gatewayDial is where a client outside the mesh sends a URL: the gateway's address, the URL's
// port (80 when none).
func (s *stack) gatewayDial(rawURL string) (string, error) {
	if s.gw == nil {
		return "", fmt.Errorf("a call from outside needs the scenario's gateway")
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	return net.JoinHostPort(s.gw.ip, port), nil
}
