package policies

import "testing"

func TestPeerAuthenticationModes(t *testing.T) {
	const yaml = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: relaxed, namespace: legacy}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: legacy}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: UNSET}
  portLevelMtls: {5432: {mode: STRICT}, 9100: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: inherit, namespace: shop}
spec: {mtls: {mode: UNSET}}
`
	objs, errs := Load([]byte(yaml), "pa.yaml")
	for _, e := range errs {
		t.Fatal(e)
	}
	p := CompilePeerAuthentications(objs.PeerAuthentications, Options{})
	for _, c := range []struct {
		ns     string
		labels map[string]string
		port   uint16
		want   MTLSMode
	}{
		{"demo", nil, 80, MTLSStrict},                                // mesh-wide
		{"shop", nil, 80, MTLSStrict},                                // UNSET inherits the mesh
		{"legacy", nil, 80, MTLSPermissive},                          // namespace overrides mesh
		{"legacy", map[string]string{"app": "db"}, 5432, MTLSStrict}, // port level
		{"legacy", map[string]string{"app": "db"}, 9100, MTLSDisable},
		{"legacy", map[string]string{"app": "db"}, 80, MTLSPermissive}, // workload UNSET inherits namespace
	} {
		if got := p.Mode(c.ns, c.labels, c.port); got != c.want {
			t.Errorf("Mode(%s, %v, %d) = %s, want %s", c.ns, c.labels, c.port, got, c.want)
		}
	}
	if got := CompilePeerAuthentications(nil, Options{}).Mode("x", nil, 1); got != MTLSPermissive {
		t.Errorf("no policy: %s, want PERMISSIVE", got)
	}
}
