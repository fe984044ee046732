package gatewaydeploy

import (
	_ "embed"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Proxy is what a deployed Gateway's pods run.
type Proxy string

const (
	// ProxyEnvoy is Envoy's contrib image with filters.so
	// (manifests/images/waypoint-envoy.Dockerfile), ADS and SDS over xdsserver's TLS listener
	// with the pod's projected istio-ca token: the production waypoint.
	ProxyEnvoy Proxy = "envoy"
	// ProxyGo is the embedded Go waypoint (cmd/waypoint, image goambient/waypoint:dev): ADS on
	// xdsserver's plaintext listener, its SVID from the CA with the projected token. For
	// clusters without the Envoy image.
	ProxyGo Proxy = "go"
)

// ParseProxy reads a Proxy's name.
func ParseProxy(s string) (Proxy, error) {
	switch p := Proxy(s); p {
	case ProxyEnvoy, ProxyGo:
		return p, nil
	}
	return "", fmt.Errorf("unknown proxy %q (want %q or %q)", s, ProxyEnvoy, ProxyGo)
}

// Paths inside the pods, as Istio's templates mount them.
const (
	rootDir      = "/var/run/secrets/istio" // ConfigMap istio-ca-root-cert
	rootFile     = rootDir + "/root-cert.pem"
	tokenDir     = "/var/run/secrets/tokens" // the projected istio-ca token
	tokenFile    = tokenDir + "/istio-token"
	bootstrapDir = "/etc/istio/proxy" // emptyDir: Envoy's generated bootstrap
	// tokenPlaceholder is replaced by the token in the bootstrap when the pod starts.
	tokenPlaceholder = "@ISTIO_TOKEN@"
)

// envoyBootstrap is Envoy's bootstrap for a deployed waypoint; see bootstrap.yaml.
//
//go:embed bootstrap.yaml
var envoyBootstrap string

// Bootstrap is the Envoy bootstrap the Envoy pods start with, for the TLS ADS address (host:port)
// whose serving certificate carries serverName, with the token placeholder still in it.
func Bootstrap(secureAddress, serverName string) (string, error) {
	host, port, ok := strings.Cut(secureAddress, ":")
	if !ok || host == "" || port == "" {
		return "", fmt.Errorf("xDS address %q: want host:port", secureAddress)
	}
	r := strings.NewReplacer("@XDS_HOST@", host, "@XDS_PORT@", port, "@XDS_SAN@", serverName, "@ROOT_FILE@", rootFile)
	return r.Replace(envoyBootstrap), nil
}

// envoyStart is the Envoy container's command: the bootstrap with the pod's token (Envoy's
// ADS initial_metadata takes inline values only, and Envoy does not expand variables), node id
// and cluster as Istio names them, then Envoy. The token is the one of the pod's start: the
// kubelet rotates the file, Envoy keeps what it read (see the package README).
const envoyStart = `set -eu
token=$(cat ` + tokenFile + `)
printf '%s\n' "$GOAMBIENT_BOOTSTRAP" | sed "s|` + tokenPlaceholder + `|$token|" > ` + bootstrapDir + `/envoy.yaml
exec envoy -c ` + bootstrapDir + `/envoy.yaml --service-node "$NODE_TYPE~$INSTANCE_IP~$POD_NAME.$POD_NAMESPACE~$POD_NAMESPACE.svc.$CLUSTER_DOMAIN" --service-cluster "$SERVICE_ACCOUNT.$POD_NAMESPACE"`

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

// podSpec is the waypoint's (or ingress gateway's) pod: the proxy container istio-proxy, the
// projected token for istio-ca, the mesh root.
func (in *input) podSpec(o *Options) corev1.PodSpec {
	nodeType := "waypoint"
	if !in.class.waypoint {
		nodeType = "router"
	}
	env := []corev1.EnvVar{
		fieldEnv("POD_NAME", "metadata.name"), fieldEnv("POD_NAMESPACE", "metadata.namespace"),
		fieldEnv("INSTANCE_IP", "status.podIP"), fieldEnv("SERVICE_ACCOUNT", "spec.serviceAccountName"),
		fieldEnv("ISTIO_META_NODE_NAME", "spec.nodeName"),
		{Name: "ISTIO_META_CLUSTER_ID", Value: o.ClusterID},
		{Name: "TRUST_DOMAIN", Value: o.TrustDomain},
	}
	probe := func(period int32, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(15021), Scheme: corev1.URISchemeHTTP}},
			PeriodSeconds: period, FailureThreshold: failures, TimeoutSeconds: 1, SuccessThreshold: 1,
			InitialDelaySeconds: map[bool]int32{true: 1, false: 0}[period == 1],
		}
	}
	c := corev1.Container{
		Name: "istio-proxy",
		Ports: []corev1.ContainerPort{
			{Name: "status-port", ContainerPort: 15021, Protocol: corev1.ProtocolTCP},
		},
		ImagePullPolicy: o.ImagePullPolicy,
		StartupProbe:    probe(1, 30),
		ReadinessProbe:  probe(15, 4),
		SecurityContext: &corev1.SecurityContext{
			Privileged: ptr.To(false), RunAsUser: ptr.To[int64](1337), RunAsGroup: ptr.To[int64](1337),
			AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true), RunAsNonRoot: ptr.To(true),
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "istiod-ca-cert", MountPath: rootDir},
			{Name: "istio-token", MountPath: tokenDir},
		},
	}
	volumes := []corev1.Volume{
		{Name: "istio-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
			ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "istio-ca", ExpirationSeconds: ptr.To[int64](43200), Path: "istio-token"},
		}}}}},
		{Name: "istiod-ca-cert", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "istio-ca-root-cert"},
		}}},
	}
	switch in.proxy {
	case ProxyGo:
		c.Image = o.GoImage
		c.Args = []string{
			"--xds-address=" + o.XDSAddress,
			"--node-id=" + nodeType + "~$(INSTANCE_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc." + o.ClusterDomain,
			"--ready-listen=0.0.0.0:15021",
			"--service-account=$(SERVICE_ACCOUNT)",
			"--trust-domain=$(TRUST_DOMAIN)",
			"--ca-address=" + o.SecureAddress,
			"--ca-root=" + rootFile,
			"--ca-token-file=" + tokenFile,
			"--access-log=-",
		}
	default:
		c.Image = o.EnvoyImage
		c.Command = []string{"/bin/sh", "-c", envoyStart}
		c.Ports = append(c.Ports,
			corev1.ContainerPort{Name: "metrics", ContainerPort: 15020, Protocol: corev1.ProtocolTCP},
			corev1.ContainerPort{Name: "http-envoy-prom", ContainerPort: 15090, Protocol: corev1.ProtocolTCP})
		env = append(env,
			corev1.EnvVar{Name: "NODE_TYPE", Value: nodeType},
			corev1.EnvVar{Name: "CLUSTER_DOMAIN", Value: o.ClusterDomain},
			corev1.EnvVar{Name: "GOAMBIENT_BOOTSTRAP", Value: o.bootstrap})
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "istio-envoy", MountPath: bootstrapDir})
		volumes = append(volumes, corev1.Volume{Name: "istio-envoy", VolumeSource: corev1.VolumeSource{
			EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("16Mi"))},
		}})
	}
	c.Env = env
	spec := corev1.PodSpec{ServiceAccountName: in.names.ServiceAccount, Containers: []corev1.Container{c}, Volumes: volumes}
	if !in.class.waypoint {
		// An ingress gateway listens on its Gateway's ports (80, 443) as user 1337 without
		// capabilities: istiod's kube-gateway.yaml opens the low ports to it with this sysctl.
		spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "net.ipv4.ip_unprivileged_port_start", Value: "0"}}}
	}
	return spec
}
