package waypointxds

import (
	"os"
	"path"
	"strings"
	"testing"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/bootstrap/internal_listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	golang "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/http/golang/v3alpha"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/xdsserver/ca"
	"github.com/goambient/goambient/ztunnel/identity"
)

// TestEnvoyYAML parses the repository's envoy.yaml as Envoy's Bootstrap and checks what the
// waypoint needs from it; the ADS node id must be served a waypoint by the translator. ADS goes
// to xdsserver's TLS listener (15012), the only one serving the waypoint its SDS secrets: the
// server is verified against the mesh root under xdsserver's serving-certificate name, and the
// stream carries the waypoint's bootstrap token (compose/bootstrap-tokens is checked against it
// in integration/compose_test.go).
func TestEnvoyYAML(t *testing.T) {
	data, err := os.ReadFile("../../envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrap.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("envoy.yaml is not a Bootstrap: %v", err)
	}
	rf := &refs{routes: map[string][]string{}, clusters: map[string][]string{}, eds: map[string][]string{},
		ecds: map[string][]string{}, listeners: map[string][]string{}, secrets: map[string][]string{}}
	for _, err := range walk(&b, "envoy.yaml", rf) {
		t.Error(err)
	}

	ads := b.GetDynamicResources().GetAdsConfig()
	if ads.GetApiType() != core.ApiConfigSource_DELTA_GRPC && ads.GetApiType() != core.ApiConfigSource_GRPC {
		t.Errorf("ads_config.api_type = %v", ads.GetApiType())
	}
	if len(ads.GetGrpcServices()) != 1 || ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != "xds-grpc" {
		t.Fatalf("ads_config.grpc_services = %v", ads.GetGrpcServices())
	}
	// The waypoint's bootstrap token, as xdsserver's secure ADS reads it (ca: "Bearer <token>").
	var auth []string
	for _, h := range ads.GetGrpcServices()[0].GetInitialMetadata() {
		if strings.EqualFold(h.GetKey(), "authorization") {
			auth = append(auth, h.GetValue())
		}
	}
	if len(auth) != 1 {
		t.Errorf("ads grpc_services[0].initial_metadata has %d authorization entries, want 1: %v", len(auth), ads.GetGrpcServices()[0].GetInitialMetadata())
	} else if tok, ok := strings.CutPrefix(auth[0], "Bearer "); !ok || len(tok) < ca.MinTokenLength || strings.ContainsAny(tok, " \t%") {
		t.Errorf("authorization metadata %q: want \"Bearer <token>\" with a token of at least %d characters (no blanks, no %% formatter)", auth[0], ca.MinTokenLength)
	}
	for name, cs := range map[string]*core.ConfigSource{"lds_config": b.GetDynamicResources().GetLdsConfig(), "cds_config": b.GetDynamicResources().GetCdsConfig()} {
		if cs.GetAds() == nil {
			t.Errorf("dynamic_resources.%s is not ADS: %v", name, cs)
		}
	}
	var xds bool
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != "xds-grpc" {
			continue
		}
		xds = true
		sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		if sa.GetAddress() != "xdsserver" || sa.GetPortValue() != 15012 {
			t.Errorf("xds-grpc points at %s:%d, want xdsserver:15012 (the TLS listener, where SDS secrets are served)", sa.GetAddress(), sa.GetPortValue())
		}
		ts := c.GetTransportSocket()
		var tc tlsv3.UpstreamTlsContext
		if ts.GetName() != "envoy.transport_sockets.tls" || ts.GetTypedConfig().UnmarshalTo(&tc) != nil {
			t.Fatalf("xds-grpc transport_socket = %v, want envoy.transport_sockets.tls with an UpstreamTlsContext", ts)
		}
		if tc.GetSni() != ca.ServerDNSName {
			t.Errorf("xds-grpc sni = %q, want %q (xdsserver's serving certificate)", tc.GetSni(), ca.ServerDNSName)
		}
		ctc := tc.GetCommonTlsContext()
		if alpn := ctc.GetAlpnProtocols(); len(alpn) != 1 || alpn[0] != "h2" {
			t.Errorf("xds-grpc alpn_protocols = %v, want [h2] (grpc-go requires ALPN)", alpn)
		}
		vc := ctc.GetValidationContext()
		if f := vc.GetTrustedCa().GetFilename(); !path.IsAbs(f) || path.Base(f) != identity.RootCertFile {
			t.Errorf("xds-grpc trusted_ca = %v, want the file %s of the mesh root", vc.GetTrustedCa(), identity.RootCertFile)
		}
		var san bool
		for _, m := range vc.GetMatchTypedSubjectAltNames() {
			if m.GetSanType() == tlsv3.SubjectAltNameMatcher_DNS && m.GetMatcher().GetExact() == ca.ServerDNSName {
				san = true
			}
		}
		if !san {
			t.Errorf("xds-grpc does not match the server's DNS SAN %s: %v", ca.ServerDNSName, vc.GetMatchTypedSubjectAltNames())
		}
		if tc.GetCommonTlsContext().GetTlsCertificates() != nil || tc.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs() != nil {
			t.Error("xds-grpc presents a client certificate; xdsserver authenticates waypoints by token")
		}
		var po httpopts.HttpProtocolOptions
		if err := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&po); err != nil ||
			po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
			t.Errorf("xds-grpc does not speak HTTP/2: %v", err)
		}
	}
	if !xds {
		t.Error("no static cluster xds-grpc")
	}
	for _, l := range b.GetStaticResources().GetListeners() {
		if l.GetName() != "prometheus_stats" { // Istio's 15090 (stats_yaml_test.go)
			t.Errorf("envoy.yaml has static listener %s; they come from xdsserver", l.GetName())
		}
	}
	if a := b.GetAdmin().GetAddress().GetSocketAddress(); a.GetAddress() != "127.0.0.1" || a.GetPortValue() != 15000 {
		t.Errorf("admin on %s:%d, want 127.0.0.1:15000", a.GetAddress(), a.GetPortValue())
	}
	var internal bool
	for _, e := range b.GetBootstrapExtensions() {
		if e.GetName() == InternalListener && e.GetTypedConfig().GetTypeUrl() == "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener" {
			internal = true
		}
	}
	if !internal {
		t.Error("bootstrap_extensions has no envoy.bootstrap.internal_listener")
	}

	// The node id is handson's waypoint, whose ECDS config loads filters.so's plugin.
	_, r := handson(t, Options{})
	key, err := r.WaypointForNode(b.GetNode().GetId())
	if err != nil || key != "handson/handson" {
		t.Fatalf("node %q serves %q, %v", b.GetNode().GetId(), key, err)
	}
	ext := r.Waypoints[key].ExtensionConfigs
	var gc golang.Config
	if len(ext) != 1 || ext[0].GetTypedConfig().UnmarshalTo(&gc) != nil {
		t.Fatalf("extension configs = %v", ext)
	}
	if gc.GetLibraryPath() != authzconfig.LibraryPath || gc.GetLibraryId() != authzconfig.LibraryID || gc.GetPluginName() != authzconfig.PluginName {
		t.Errorf("golang filter config = %v", &gc)
	}
}
