package integration

// Checks of manifests/install that need no cluster (integration/kube applies it to a real API
// server): the CRDs are those of go.mod's modules, every file is in the kustomization, and the
// DaemonSet's and Deployment's arguments are flags of the binaries, with paths in their mounts.

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/goambient/goambient/ztunnel/xds"
	"github.com/goambient/goambient/ztunnel/zds"
)

// moduleDir is where the go command keeps module path at go.mod's version.
func moduleDir(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", path).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", path, err)
	}
	var m struct{ Dir, Version string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("go mod download %s: %v %s", path, err, out)
	}
	return m.Dir
}

// TestInstallCRDsMatchGoMod fails when manifests/install/crds differ from the CRDs of the
// istio.io/api and sigs.k8s.io/gateway-api versions in go.mod (`make crds` copies them).
func TestInstallCRDsMatchGoMod(t *testing.T) {
	want := map[string]string{
		"istio.yaml": filepath.Join(moduleDir(t, "istio.io/api"), "kubernetes", "customresourcedefinitions.gen.yaml"),
	}
	gw, _ := filepath.Glob(filepath.Join(moduleDir(t, "sigs.k8s.io/gateway-api"), "config", "crd", "standard", "*.yaml"))
	if len(gw) == 0 {
		t.Fatal("no Gateway API standard CRDs in the module")
	}
	for _, p := range gw {
		want[filepath.Join("gateway-api", filepath.Base(p))] = p
	}
	have := map[string]bool{}
	filepath.WalkDir("../manifests/install/crds", func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel("../manifests/install/crds", p)
			have[rel] = true
		}
		return err
	})
	for rel, src := range want {
		if !have[rel] {
			t.Errorf("manifests/install/crds/%s is missing (make crds)", rel)
			continue
		}
		if readFile(t, filepath.Join("../manifests/install/crds", rel)) != readFile(t, src) {
			t.Errorf("manifests/install/crds/%s differs from %s (make crds)", rel, src)
		}
		delete(have, rel)
	}
	for rel := range have {
		t.Errorf("manifests/install/crds/%s is not from go.mod's modules (make crds)", rel)
	}
}

// TestInstallKustomization: every YAML file of the bundle is a resource of the kustomization.
func TestInstallKustomization(t *testing.T) {
	var k struct{ Resources []string }
	if err := yaml.Unmarshal([]byte(readFile(t, "../manifests/install/kustomization.yaml")), &k); err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir("../manifests/install", func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") || d.Name() == "kustomization.yaml" {
			return err
		}
		rel, _ := filepath.Rel("../manifests/install", p)
		if !slices.Contains(k.Resources, filepath.ToSlash(rel)) {
			t.Errorf("%s is not in kustomization.yaml", rel)
		}
		return nil
	})
}

// installObject decodes the document of kind and name from a file of manifests/install.
func installObject(t *testing.T, file, kind, name string, into any) {
	t.Helper()
	for _, doc := range bytes.Split([]byte(readFile(t, "../manifests/install/"+file)), []byte("\n---")) {
		var meta struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if yaml.Unmarshal(doc, &meta) == nil && meta.Kind == kind && meta.Metadata.Name == name {
			if err := yaml.UnmarshalStrict(doc, into); err != nil {
				t.Fatalf("%s %s: %v", kind, name, err)
			}
			return
		}
	}
	t.Fatalf("%s has no %s %s", file, kind, name)
}

// args parses --name=value arguments, checking each name is a flag of the command in dir.
func args(t *testing.T, dir string, c corev1.Container) map[string]string {
	t.Helper()
	flags := flagNames(t, dir)
	out := map[string]string{}
	for _, a := range c.Args {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !flags[name] {
			t.Errorf("%s: argument %q is not a flag of %s", c.Name, a, dir)
		}
		if !ok {
			value = "true"
		}
		out[name] = value
	}
	return out
}

// mounted says whether path is under a volume mount of c, and returns the volume.
func mounted(c corev1.Container, vols []corev1.Volume, path string) *corev1.Volume {
	for _, m := range c.VolumeMounts {
		if strings.HasPrefix(path, m.MountPath+"/") {
			for i := range vols {
				if vols[i].Name == m.Name {
					return &vols[i]
				}
			}
		}
	}
	return nil
}

// TestInstallZtunnel: the DaemonSet runs the ztunnel with its own flags, reaching istiod's
// Service on 15012 with the projected istio-ca token and the root of istio-ca-root-cert, and
// the node agent's socket in the shared hostPath, as Istio's chart does.
func TestInstallZtunnel(t *testing.T) {
	var ds appsv1.DaemonSet
	installObject(t, "ztunnel.yaml", "DaemonSet", "ztunnel", &ds)
	spec := ds.Spec.Template.Spec
	c := spec.Containers[0]
	a := args(t, "../cmd/ztunnel", c)
	for _, f := range []string{"xds-address", "ca-address"} {
		if a[f] != xds.DefaultServerName+":15012" {
			t.Errorf("--%s=%s: want istiod's Service, %s:15012", f, a[f], xds.DefaultServerName)
		}
	}
	for _, f := range []string{"xds-root", "ca-root"} {
		v := mounted(c, spec.Volumes, a[f])
		if v == nil || v.ConfigMap == nil || v.ConfigMap.Name != "istio-ca-root-cert" || filepath.Base(a[f]) != "root-cert.pem" {
			t.Errorf("--%s=%s is not root-cert.pem of the ConfigMap istio-ca-root-cert", f, a[f])
		}
	}
	for _, f := range []string{"xds-token-file", "ca-token-file"} {
		v := mounted(c, spec.Volumes, a[f])
		if v == nil || v.Projected == nil || len(v.Projected.Sources) != 1 || v.Projected.Sources[0].ServiceAccountToken == nil ||
			v.Projected.Sources[0].ServiceAccountToken.Audience != "istio-ca" || v.Projected.Sources[0].ServiceAccountToken.Path != filepath.Base(a[f]) {
			t.Errorf("--%s=%s is not a projected token for audience istio-ca", f, a[f])
		}
	}
	if v := mounted(c, spec.Volumes, a["zds-socket"]); a["zds-socket"] != zds.DefaultSocket || v == nil || v.HostPath == nil || v.HostPath.Path != filepath.Dir(zds.DefaultSocket) {
		t.Errorf("--zds-socket=%s is not istio-cni's socket in the hostPath %s", a["zds-socket"], filepath.Dir(zds.DefaultSocket))
	}
	if spec.HostNetwork || spec.ServiceAccountName != "ztunnel" {
		t.Errorf("hostNetwork %v, service account %q: want the pod's own network namespace, ztunnel", spec.HostNetwork, spec.ServiceAccountName)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "SYS_ADMIN"}) || sc.Privileged == nil || *sc.Privileged ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("securityContext: %+v", sc)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz/ready" || p.HTTPGet.Port.IntValue() != 15021 {
		t.Errorf("readiness probe: %+v (the ztunnel's --readiness listener serves /healthz/ready on 15021)", p)
	}
	if env := c.Env; len(env) == 0 || env[0].Name != "NODE_NAME" || env[0].ValueFrom == nil || env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME (--node's default) is not the pod's node: %+v", env)
	}
}

// TestInstallXdsserver: the Deployment runs xdsserver in cluster mode with its own flags (its
// CA in the cluster's Secrets),
// listening where the istiod Service sends, probed on /healthz/ready, non-root, read-only.
func TestInstallXdsserver(t *testing.T) {
	var d appsv1.Deployment
	installObject(t, "xdsserver.yaml", "Deployment", "xdsserver", &d)
	var svc corev1.Service
	installObject(t, "xdsserver.yaml", "Service", "istiod", &svc)
	spec := d.Spec.Template.Spec
	c := spec.Containers[0]
	a := args(t, "../cmd/xdsserver", c)
	// In cluster mode the CA is in istiod's Secrets (cacerts, istio-ca-secret), read through the
	// API: no --ca-dir, no mounted key.
	if a["kube"] != "true" || a["ca-dir"] != "" || len(spec.Volumes) != 0 {
		t.Errorf("not in cluster mode with the CA in the cluster's Secrets: %v, volumes %v", a, spec.Volumes)
	}
	listen := map[int32]string{15010: a["xds-listen"], 15012: a["secure-listen"], 15014: a["http-listen"]}
	for _, p := range svc.Spec.Ports {
		if !strings.HasPrefix(listen[p.Port], "0.0.0.0:") || !strings.HasSuffix(listen[p.Port], ":"+p.TargetPort.String()) && p.TargetPort.IntValue() != 0 {
			t.Errorf("Service port %d: xdsserver listens on %q", p.Port, listen[p.Port])
		}
		delete(listen, p.Port)
	}
	if len(listen) != 0 {
		t.Errorf("ports without a Service port: %v", listen)
	}
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("the Service's selector %s=%s does not select the pods", k, v)
		}
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz/ready" || p.HTTPGet.Port.IntValue() != 15014 {
		t.Errorf("readiness probe: %+v", p)
	}
	psc, sc := spec.SecurityContext, c.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 {
		t.Errorf("security context: pod %+v container %+v", psc, sc)
	}
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources: %+v", c.Resources)
	}
}

// TestDeployedWaypointArgs: the Deployment xdsserver's deployment controller makes for a
// waypoint with the embedded Go waypoint (--waypoint-proxy=go; the golden file of
// xdsserver/gatewaydeploy, checked there against the renderer) runs cmd/waypoint with its own
// flags, its CA root and token inside the pod's mounts (the ConfigMap istio-ca-root-cert and a
// projected token for istio-ca), listening for readiness where the probes look.
func TestDeployedWaypointArgs(t *testing.T) {
	var sa corev1.ServiceAccount
	var d appsv1.Deployment
	docs := bytes.Split([]byte(readFile(t, "../xdsserver/gatewaydeploy/testdata/handson-go.yaml")), []byte("\n---"))
	if len(docs) != 3 || yaml.UnmarshalStrict(docs[0], &sa) != nil || yaml.UnmarshalStrict(docs[1], &d) != nil {
		t.Fatal("handson-go.yaml: want the ServiceAccount, Deployment and Service")
	}
	spec := d.Spec.Template.Spec
	c := spec.Containers[0]
	a := args(t, "../cmd/waypoint", c)
	if v := mounted(c, spec.Volumes, a["ca-root"]); v == nil || v.ConfigMap == nil || v.ConfigMap.Name != "istio-ca-root-cert" || filepath.Base(a["ca-root"]) != "root-cert.pem" {
		t.Errorf("--ca-root=%s is not root-cert.pem of the ConfigMap istio-ca-root-cert", a["ca-root"])
	}
	if v := mounted(c, spec.Volumes, a["ca-token-file"]); v == nil || v.Projected == nil || v.Projected.Sources[0].ServiceAccountToken == nil ||
		v.Projected.Sources[0].ServiceAccountToken.Audience != "istio-ca" || v.Projected.Sources[0].ServiceAccountToken.Path != filepath.Base(a["ca-token-file"]) {
		t.Errorf("--ca-token-file=%s is not a projected token for istio-ca", a["ca-token-file"])
	}
	if a["ca-address"] != xds.DefaultServerName+":15012" || a["xds-address"] != xds.DefaultServerName+":15010" {
		t.Errorf("--ca-address=%s --xds-address=%s: want istiod's Service", a["ca-address"], a["xds-address"])
	}
	if a["svid-dir"] != "" || !strings.HasSuffix(a["ready-listen"], ":15021") || c.ReadinessProbe.HTTPGet.Port.IntValue() != 15021 {
		t.Errorf("--svid-dir=%q --ready-listen=%q, probe %v", a["svid-dir"], a["ready-listen"], c.ReadinessProbe.HTTPGet)
	}
	// $(VAR) references are expanded by the kubelet from the container's environment.
	env := map[string]bool{}
	for _, e := range c.Env {
		env[e.Name] = true
	}
	for _, v := range a {
		for _, ref := range strings.Split(v, "$(")[1:] {
			if name, _, _ := strings.Cut(ref, ")"); !env[name] {
				t.Errorf("argument %q names $(%s), not in the container's environment", v, name)
			}
		}
	}
	if spec.ServiceAccountName != sa.Name {
		t.Errorf("the pods run as %q, the ServiceAccount made is %q", spec.ServiceAccountName, sa.Name)
	}
}
