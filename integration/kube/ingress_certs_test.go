package kube_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/goambient/goambient/ztunnel/xds"
)

// sdsStream is a delta ADS stream to xdsserver's TLS listener asking for SDS secrets by name,
// as an ingress gateway's Envoy does, with a bearer token.
type sdsStream struct {
	s      discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	got    map[string]bool // secret names received so far
	closed func()
}

func openSDS(t *testing.T, ctx context.Context, addr, rootFile, token, nodeID string, names []string) *sdsStream {
	t.Helper()
	creds, err := xds.TLSCredentials(rootFile, "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token))
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: nodeID}, TypeUrl: resource.SecretType, ResourceNamesSubscribe: names}); err != nil {
		t.Fatal(err)
	}
	st := &sdsStream{s: s, got: map[string]bool{}, closed: func() { cancel(); conn.Close() }}
	t.Cleanup(st.closed)
	return st
}

// until receives (and ACKs) responses until have holds for the names received; it returns the
// stream's error if it ends first.
func (st *sdsStream) until(t *testing.T, have func(map[string]bool) bool) error {
	t.Helper()
	for !have(st.got) {
		resp, err := st.s.Recv()
		if err != nil {
			return err
		}
		for _, r := range resp.GetResources() {
			var sec tlsv3.Secret
			if err := r.GetResource().UnmarshalTo(&sec); err != nil {
				t.Fatal(err)
			}
			if sec.GetTlsCertificate().GetPrivateKey() == nil && strings.HasPrefix(sec.GetName(), "kubernetes-gateway://") {
				t.Errorf("secret %s without its key", sec.GetName())
			}
			st.got[r.GetName()] = true
		}
		if err := st.s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.SecretType, ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
	}
	return nil
}

// TestIngressCertificatesByPodToken: an ingress Gateway's pod authenticated by TokenReview — a
// token of its ServiceAccount <gateway>-istio (created by xdsserver's deployment controller)
// for istio-ca, from the real API server — gets on the TLS listener its SVID and the
// certificate of its HTTPS listener's Secret (kubernetes-gateway://ns/name), not the Secret of
// another namespace its other listener names without a ReferenceGrant (status RefNotPermitted);
// once a ReferenceGrant there allows it, that one arrives on the same stream. Refused
// (PermissionDenied, nothing sent): another ServiceAccount's token of the same namespace, and
// the gateway's token for a node of another namespace. Peers: the real xdsserver binary and
// kube-apiserver (TokenRequest, TokenReview).
func TestIngressCertificatesByPodToken(t *testing.T) {
	e := cluster(t)
	x := e.startXdsserver(t, e.net+".246")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	suffix := strings.ReplaceAll(e.net, ".", "-")
	ns, other := "ingcert-"+suffix, "ingcert-other-"+suffix
	for _, n := range []string{ns, other} {
		if err := e.s.CreateNamespace(ctx, n, map[string]string{"istio.io/dataplane-mode": "ambient"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range [][2]string{{ns, "own-cert"}, {other, "shared-cert"}} {
		crt, key := selfSigned(t)
		if _, err := e.s.Kube.CoreV1().Secrets(s[0]).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: s[1]}, Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{"tls.crt": crt, "tls.key": key}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	objs := filepath.Join(t.TempDir(), "gateway.yaml")
	os.WriteFile(objs, []byte(`apiVersion: gateway.networking.k8s.io/v1beta1
kind: Gateway
metadata: {name: gateway, namespace: `+ns+`}
spec:
  gatewayClassName: istio
  listeners:
  - {name: own, hostname: "own.opssec.in", port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: own-cert}]}}
  - {name: cross, hostname: "cross.opssec.in", port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: shared-cert, namespace: `+other+`}]}}
`), 0o644)
	grant := filepath.Join(t.TempDir(), "grant.yaml")
	os.WriteFile(grant, []byte(`apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: gateways-of-`+ns+`, namespace: `+other+`}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: `+ns+`}]
  to: [{group: "", kind: Secret, name: shared-cert}]
`), 0o644)
	if _, err := e.s.Kubectl(ctx, "apply", "--server-side", "-f", objs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // the cluster is shared: other tests compare its whole mesh
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, f := range []string{grant, objs} {
			if _, err := e.s.Kubectl(ctx, "delete", "--ignore-not-found", "-f", f); err != nil {
				t.Error(err)
			}
		}
		e.s.Kube.CoreV1().Secrets(ns).Delete(ctx, "own-cert", metav1.DeleteOptions{})
		e.s.Kube.CoreV1().Secrets(other).Delete(ctx, "shared-cert", metav1.DeleteOptions{})
	})
	eventually(t, time.Minute, "the gateway's ServiceAccount, from the deployment controller", func() bool {
		_, err := e.s.Kube.CoreV1().ServiceAccounts(ns).Get(ctx, "gateway-istio", metav1.GetOptions{})
		return err == nil
	})
	token := func(ns, sa string) string {
		tok, err := e.s.Token(ctx, ns, sa, []string{"istio-ca"}, nil, 3600)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	gwTok := token(ns, "gateway-istio")
	root := filepath.Join(x.caDir, "root-cert.pem")
	addr := x.host + ":15012"
	// The pod is not running here (no kubelet): its node id names it as the Gateway, which
	// xdsserver takes as one of the Gateway's nodes (WaypointForNode).
	node := "router~" + e.net + ".247~gateway." + ns + "~" + ns + ".svc.cluster.local"
	own, cross := "kubernetes-gateway://"+ns+"/own-cert", "kubernetes-gateway://"+other+"/shared-cert"
	names := []string{"default", "ROOTCA", own, cross}

	st := openSDS(t, ctx, addr, root, gwTok, node, names)
	if err := st.until(t, func(g map[string]bool) bool { return g["default"] && g["ROOTCA"] && g[own] }); err != nil {
		t.Fatalf("the gateway's own token: %v (got %v)", err, st.got)
	}
	if st.got[cross] {
		t.Errorf("%s was sent without a ReferenceGrant", cross)
	}
	if out, err := e.s.Kubectl(ctx, "get", "gateway", "-n", ns, "gateway", "-o",
		`jsonpath={.status.listeners[?(@.name=="cross")].conditions[?(@.type=="ResolvedRefs")].reason}`); err != nil || strings.TrimSpace(string(out)) != "RefNotPermitted" {
		t.Errorf("listener cross: ResolvedRefs reason %q (%v), want RefNotPermitted", out, err)
	}

	if _, err := e.s.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "intruder"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, token, node string }{
		{"another service account of the namespace", token(ns, "intruder"), node},
		{"the gateway's token for a node of another namespace", gwTok, "router~" + e.net + ".248~gateway." + other + "~" + other + ".svc.cluster.local"},
	} {
		bad := openSDS(t, ctx, addr, root, tc.token, tc.node, names)
		err := bad.until(t, func(map[string]bool) bool { return false })
		if status.Code(err) != codes.PermissionDenied || len(bad.got) != 0 {
			t.Errorf("%s: %v after %v, want PermissionDenied before anything", tc.name, err, bad.got)
		}
	}

	if _, err := e.s.Kubectl(ctx, "apply", "--server-side", "-f", grant); err != nil {
		t.Fatal(err)
	}
	if err := st.until(t, func(g map[string]bool) bool { return g[cross] }); err != nil {
		t.Fatalf("after the ReferenceGrant: %v (got %v)", err, st.got)
	}
	x.noForbidden(t)
}
