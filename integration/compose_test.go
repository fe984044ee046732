package integration

// docker-compose.yaml cannot be started here (no container engine): these checks keep it
// consistent with the binaries' flags, the filter's constants, go.mod and envoy.yaml.

import (
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/xdsserver/ca"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/source/files"
	"github.com/goambient/goambient/xdsserver/waypointxds"
)

type composeFile struct {
	Services map[string]composeService `json:"services"`
	Configs  map[string]struct {
		Content string `json:"content"`
	} `json:"configs"`
}

type composeService struct {
	Image       string            `json:"image"`
	Entrypoint  []string          `json:"entrypoint"`
	Command     []string          `json:"command"`
	Environment map[string]string `json:"environment"`
	Volumes     []string          `json:"volumes"`
	NetworkMode string            `json:"network_mode"`
	Networks    map[string]struct {
		IPv4 string `json:"ipv4_address"`
	} `json:"networks"`
	Configs []struct {
		Source string `json:"source"`
		Target string `json:"target"`
	} `json:"configs"`
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	var c composeFile
	if err := yaml.Unmarshal([]byte(readFile(t, "../docker-compose.yaml")), &c); err != nil {
		t.Fatalf("docker-compose.yaml: %v", err)
	}
	if len(c.Services) == 0 {
		t.Fatal("docker-compose.yaml: no services")
	}
	return c
}

func (s composeService) ip(t *testing.T, name string) string {
	t.Helper()
	for _, n := range s.Networks {
		if n.IPv4 != "" {
			return n.IPv4
		}
	}
	t.Fatalf("service %s has no ipv4_address", name)
	return ""
}

// flagNames returns the flags a command defines: the name argument of every flag-defining call
// (fs.String("name", ...), fs.Var(&v, "name", ...), ...) in the Go files of its folder.
func flagNames(t *testing.T, dir string) map[string]bool {
	t.Helper()
	nameArg := map[string]int{
		"String": 0, "Bool": 0, "Int": 0, "Int64": 0, "Uint": 0, "Uint64": 0, "Float64": 0, "Duration": 0, "Func": 0, "BoolFunc": 0,
		"StringVar": 1, "BoolVar": 1, "IntVar": 1, "Int64Var": 1, "UintVar": 1, "Uint64Var": 1, "Float64Var": 1, "DurationVar": 1,
		"Var": 1, "TextVar": 1,
	}
	names := map[string]bool{}
	paths, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			i, ok := nameArg[sel.Sel.Name]
			if !ok || len(call.Args) <= i {
				return true
			}
			if lit, ok := call.Args[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil {
					names[s] = true
				}
			}
			return true
		})
	}
	if len(names) == 0 {
		t.Fatalf("no flag definitions found in %s", dir)
	}
	return names
}

// invocations splits a service's command into the goambient binaries it runs and their
// arguments (a shell command line is split on blanks and &&).
func invocations(s composeService) [][]string {
	words := append(slices.Clone(s.Entrypoint), s.Command...)
	if len(s.Entrypoint) > 0 && strings.HasSuffix(s.Entrypoint[0], "sh") {
		words = strings.Fields(strings.Join(s.Command, " "))
	}
	var out [][]string
	for _, w := range words {
		switch {
		case strings.HasPrefix(w, "/opt/goambient/bin/"):
			out = append(out, []string{w})
		case w == "&&" || w == ";":
			out = append(out, nil)
		case len(out) > 0 && out[len(out)-1] != nil:
			out[len(out)-1] = append(out[len(out)-1], w)
		}
	}
	return slices.DeleteFunc(out, func(v []string) bool { return v == nil })
}

// flagValue returns the value of --name in args (--name=v or --name v).
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		a = strings.TrimLeft(a, "-")
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// TestComposeFlagsExist: every flag the compose file gives a goambient binary is defined by it.
func TestComposeFlagsExist(t *testing.T) {
	c := loadCompose(t)
	defined := map[string]map[string]bool{}
	checked := 0
	for name, s := range c.Services {
		for _, inv := range invocations(s) {
			bin := filepath.Base(inv[0])
			if _, err := os.Stat(filepath.Join("..", "cmd", bin)); err != nil {
				t.Errorf("service %s runs %s: there is no cmd/%s", name, inv[0], bin)
				continue
			}
			if defined[bin] == nil {
				defined[bin] = flagNames(t, filepath.Join("..", "cmd", bin))
			}
			for _, a := range inv[1:] {
				if !strings.HasPrefix(a, "-") {
					continue
				}
				flag, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
				if !defined[bin][flag] {
					t.Errorf("service %s: %s has no flag --%s", name, bin, flag)
				}
				checked++
			}
		}
	}
	if checked < 10 {
		t.Fatalf("only %d flags checked: the compose file's commands were not understood", checked)
	}
}

// TestComposeWaypoint: the Envoy waypoint's image matches the Envoy SDK in go.mod, the mounts
// match authzconfig, its node id names the waypoint pod at its own address, and the ztunnels
// reach xdsserver by its service name (plaintext ADS); Envoy reaches its TLS listener with the
// mesh root and the waypoint's bootstrap token (TestComposeWaypointSecureADS).
func TestComposeWaypoint(t *testing.T) {
	c := loadCompose(t)
	wp, ok := c.Services["waypoint"]
	if !ok {
		t.Fatal("no waypoint service")
	}
	ver := regexp.MustCompile(`(?m)^\s*github\.com/envoyproxy/envoy (v\S+)`).FindStringSubmatch(readFile(t, "../go.mod"))
	if ver == nil {
		t.Fatal("go.mod does not require github.com/envoyproxy/envoy")
	}
	if want := "envoyproxy/envoy:contrib-" + ver[1]; wp.Image != want {
		t.Errorf("waypoint image %q, want %q (the Go filter SDK's version, go.mod)", wp.Image, want)
	}
	mounts := map[string]string{}
	for _, v := range wp.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 {
			mounts[parts[1]] = parts[0]
		}
	}
	if mounts[authzconfig.LibraryPath] != "./bin/filters.so" {
		t.Errorf("waypoint mounts %q at %s (authzconfig.LibraryPath), want ./bin/filters.so", mounts[authzconfig.LibraryPath], authzconfig.LibraryPath)
	}
	bootstrap, _ := flagValue(wp.Command, "c")
	if bootstrap == "" || mounts[bootstrap] != "./envoy.yaml" {
		t.Errorf("envoy -c %q, mounted from %q; want ./envoy.yaml", bootstrap, mounts[bootstrap])
	}
	if wp.Environment["GODEBUG"] != "cgocheck=0" {
		t.Errorf("waypoint GODEBUG = %q, want cgocheck=0", wp.Environment["GODEBUG"])
	}

	// The node id names the waypoint pod; the model places that pod at the container's address.
	node, _ := flagValue(wp.Command, "service-node")
	pod, ns, err := waypointxds.ParseNodeID(node)
	if err != nil || !strings.HasPrefix(node, "waypoint~") {
		t.Fatalf("--service-node %q: %v", node, err)
	}
	mesh := composeMesh(t, c)
	w := mesh[ns+"/"+pod]
	if w == nil {
		t.Fatalf("--service-node names pod %s/%s, which the compose mesh does not have", ns, pod)
	}
	wpIP := wp.ip(t, "waypoint")
	if ip := strings.Split(node, "~")[1]; ip != wpIP || w.IPs[0].String() != wpIP {
		t.Errorf("node id IP %s, pod IP %s, container IP %s: want the same", ip, w.IPs[0], wpIP)
	}
	if w.WaypointOf == "" {
		t.Errorf("pod %s/%s is not a waypoint instance in the model", ns, pod)
	}
	// handson-blue must be reachable from the waypoint: its pod address is worker2's container.
	if blue, z := mesh["handson/handson-blue"], c.Services["ztunnel-worker2"]; blue == nil || blue.IPs[0].String() != z.ip(t, "ztunnel-worker2") {
		t.Errorf("handson-blue is not placed at ztunnel-worker2's address")
	}

	// Every ztunnel reaches xdsserver by its service name, on the port it listens on.
	xdsListen := ""
	for _, inv := range invocations(c.Services["xdsserver"]) {
		xdsListen, _ = flagValue(inv, "xds-listen")
	}
	xdsHost, xdsPort, err := net.SplitHostPort(xdsListen)
	if err != nil {
		t.Fatalf("xdsserver --xds-listen %q: %v", xdsListen, err)
	}
	// The plaintext ADS is unauthenticated: on xdsserver's own mesh address, not on every one.
	if xdsHost != c.Services["xdsserver"].ip(t, "xdsserver") {
		t.Errorf("xdsserver --xds-listen %s: want its mesh address %s (the plaintext ADS is unauthenticated)", xdsListen, c.Services["xdsserver"].ip(t, "xdsserver"))
	}
	for name, s := range c.Services {
		for _, inv := range invocations(s) {
			if addr, ok := flagValue(inv, "xds-address"); ok && addr != net.JoinHostPort("xdsserver", xdsPort) {
				t.Errorf("service %s: --xds-address %s, want xdsserver:%s", name, addr, xdsPort)
			}
		}
	}

	t.Run("envoy.yaml", func(t *testing.T) {
		b, err := os.ReadFile("../envoy.yaml")
		if os.IsNotExist(err) {
			t.Skip("envoy.yaml does not exist yet (written with xdsserver's waypoint translation): its ADS target is not checked")
		}
		if err != nil {
			t.Fatal(err)
		}
		host, port, err := adsTarget(b)
		if err != nil {
			t.Fatalf("envoy.yaml: %v", err)
		}
		// Envoy's ADS goes to the TLS listener: the only one serving the waypoint its secrets.
		secureListen := ""
		for _, inv := range invocations(c.Services["xdsserver"]) {
			secureListen, _ = flagValue(inv, "secure-listen")
		}
		_, securePort, err := net.SplitHostPort(secureListen)
		if err != nil {
			t.Fatalf("xdsserver --secure-listen %q: %v", secureListen, err)
		}
		if securePort == xdsPort {
			t.Errorf("xdsserver's --secure-listen and --xds-listen share port %s", xdsPort)
		}
		if host != "xdsserver" || port != securePort {
			t.Errorf("envoy.yaml's ADS target is %s:%s, want the compose service's TLS listener xdsserver:%s", host, port, securePort)
		}
	})
}

// TestComposeWaypointSecureADS: what the waypoint's Envoy needs for its ADS on xdsserver's TLS
// listener is in place: xdsserver runs its CA on the root the certs service made and accepts a
// token file that exists; envoy.yaml's bearer token is in that file as the waypoint of the
// compose node id; envoy.yaml's trusted_ca is mounted into the waypoint from a volume to which
// the certs service copies the root of xdsserver's --ca-dir.
func TestComposeWaypointSecureADS(t *testing.T) {
	c := loadCompose(t)
	xs, wp, certs := c.Services["xdsserver"], c.Services["waypoint"], c.Services["certs"]
	invs := invocations(xs)
	if len(invs) != 1 {
		t.Fatalf("xdsserver's command: %v", invs)
	}
	caDir, _ := flagValue(invs[0], "ca-dir")
	tokensPath, _ := flagValue(invs[0], "bootstrap-tokens")
	if caDir == "" || tokensPath == "" {
		t.Fatalf("xdsserver needs --ca-dir and --bootstrap-tokens for the waypoint's secure ADS: %v", invs[0])
	}
	mountsOf := func(s composeService) map[string]string {
		m := map[string]string{}
		for _, v := range s.Volumes {
			if parts := strings.Split(v, ":"); len(parts) >= 2 {
				m[parts[1]] = parts[0]
			}
		}
		return m
	}
	xm, wm, cm := mountsOf(xs), mountsOf(wp), mountsOf(certs)

	// The tokens file is a file of the repository, mounted where the flag says, and valid.
	src := xm[tokensPath]
	if !strings.HasPrefix(src, "./") {
		t.Fatalf("--bootstrap-tokens %s is mounted from %q, want a file of the repository", tokensPath, src)
	}
	tf, err := ca.LoadTokenFile(filepath.Join("..", src))
	if err != nil {
		t.Fatal(err)
	}

	// envoy.yaml's token is the waypoint's, for the Gateway the compose node id runs.
	b, err := os.ReadFile("../envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	auth, trustedCA, err := adsAuth(b)
	if err != nil {
		t.Fatalf("envoy.yaml: %v", err)
	}
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		t.Fatalf("envoy.yaml's ADS authorization metadata %q is not \"Bearer <token>\"", auth)
	}
	caller, err := tf.Authenticate(context.Background(), tok)
	if err != nil {
		t.Fatalf("envoy.yaml's ADS token is not in %s: %v", src, err)
	}
	node, _ := flagValue(wp.Command, "service-node")
	pod, ns, err := waypointxds.ParseNodeID(node)
	if err != nil {
		t.Fatal(err)
	}
	w := composeMesh(t, c)[ns+"/"+pod]
	if w == nil || w.WaypointOf == "" {
		t.Fatalf("--service-node %s names no waypoint pod of the compose mesh", node)
	}
	if caller.Kind != ca.KindWaypoint || caller.Namespace+"/"+caller.Name != w.WaypointOf {
		t.Errorf("envoy.yaml's token is a %v %s/%s in %s, want the waypoint %s (the compose node id's)", caller.Kind, caller.Namespace, caller.Name, src, w.WaypointOf)
	}

	// trusted_ca: a volume mounted into the waypoint, to which certs copies xdsserver's root.
	trustDir, trustFile := filepath.Dir(trustedCA), filepath.Base(trustedCA)
	vol := wm[trustDir]
	if vol == "" || strings.HasPrefix(vol, ".") || strings.HasPrefix(vol, "/") {
		t.Fatalf("envoy.yaml's trusted_ca %s: its folder is mounted from %q, want a named volume", trustedCA, vol)
	}
	if xm[caDir] == "" || cm[caDir] != xm[caDir] {
		t.Errorf("xdsserver's --ca-dir %s is %q, certs has %q there: want the same volume", caDir, xm[caDir], cm[caDir])
	}
	certsTrust := ""
	for dst, v := range cm {
		if v == vol {
			certsTrust = dst
		}
	}
	script := strings.Join(append(slices.Clone(certs.Entrypoint), certs.Command...), " ")
	cp := "cp " + filepath.Join(caDir, "root-cert.pem") + " " + filepath.Join(certsTrust, trustFile)
	if certsTrust == "" || !strings.Contains(script, cp) {
		t.Errorf("certs does not run %q (volume %s, mounted in the waypoint at %s): %s", cp, vol, trustDir, script)
	}
	if trustFile != "root-cert.pem" {
		t.Errorf("envoy.yaml's trusted_ca %s: want root-cert.pem", trustedCA)
	}
}

// composeMesh builds the model xdsserver builds from the files the compose file mounts into it.
func composeMesh(t *testing.T, c composeFile) map[string]*model.Workload {
	t.Helper()
	dir := t.TempDir()
	xs := c.Services["xdsserver"]
	for _, v := range xs.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || !strings.HasPrefix(parts[1], "/etc/goambient/mesh/") {
			continue
		}
		writeAtomic(t, filepath.Join(dir, filepath.Base(parts[1])), readFile(t, filepath.Join("..", parts[0])))
	}
	for _, cf := range xs.Configs {
		content, ok := c.Configs[cf.Source]
		if !ok {
			t.Fatalf("xdsserver uses config %q, which is not defined", cf.Source)
		}
		writeAtomic(t, filepath.Join(dir, filepath.Base(cf.Target)), content.Content)
	}
	args := invocations(xs)
	if len(args) != 1 || !slices.Contains(args[0], "--loopback") {
		t.Fatalf("xdsserver's command %v: want one xdsserver --loopback", args)
	}
	cfg := model.DefaultConfig()
	cfg.Placement = model.LoopbackPlacement
	m, err := files.New(files.Options{Paths: []string{dir}, Model: cfg}).Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range m.Errors {
		t.Errorf("compose mesh: %v", e)
	}
	out := map[string]*model.Workload{}
	for _, w := range m.Workloads {
		if len(w.IPs) > 0 {
			out[w.Key()] = w
		}
	}
	return out
}

// adsAuth returns the authorization metadata of envoy.yaml's ADS grpc service and the trusted
// CA file of the cluster it uses.
func adsAuth(b []byte) (auth, trustedCA string, err error) {
	var boot struct {
		DynamicResources struct {
			ADSConfig struct {
				GRPCServices []struct {
					EnvoyGRPC struct {
						ClusterName string `json:"cluster_name"`
					} `json:"envoy_grpc"`
					InitialMetadata []struct {
						Key   string `json:"key"`
						Value string `json:"value"`
					} `json:"initial_metadata"`
				} `json:"grpc_services"`
			} `json:"ads_config"`
		} `json:"dynamic_resources"`
		StaticResources struct {
			Clusters []struct {
				Name            string `json:"name"`
				TransportSocket struct {
					TypedConfig struct {
						CommonTLSContext struct {
							ValidationContext struct {
								TrustedCA struct {
									Filename string `json:"filename"`
								} `json:"trusted_ca"`
							} `json:"validation_context"`
						} `json:"common_tls_context"`
					} `json:"typed_config"`
				} `json:"transport_socket"`
			} `json:"clusters"`
		} `json:"static_resources"`
	}
	if err := yaml.Unmarshal(b, &boot); err != nil {
		return "", "", err
	}
	svcs := boot.DynamicResources.ADSConfig.GRPCServices
	if len(svcs) == 0 {
		return "", "", fmt.Errorf("no dynamic_resources.ads_config.grpc_services")
	}
	for _, h := range svcs[0].InitialMetadata {
		if strings.EqualFold(h.Key, "authorization") {
			auth = h.Value
		}
	}
	if auth == "" {
		return "", "", fmt.Errorf("ads_config.grpc_services[0] has no authorization initial_metadata")
	}
	for _, cl := range boot.StaticResources.Clusters {
		if cl.Name == svcs[0].EnvoyGRPC.ClusterName {
			trustedCA = cl.TransportSocket.TypedConfig.CommonTLSContext.ValidationContext.TrustedCA.Filename
		}
	}
	if trustedCA == "" {
		return "", "", fmt.Errorf("static cluster %q has no trusted_ca file", svcs[0].EnvoyGRPC.ClusterName)
	}
	return auth, trustedCA, nil
}

// adsTarget finds the address of the cluster envoy.yaml's ADS config points at.
func adsTarget(b []byte) (host, port string, err error) {
	var boot struct {
		DynamicResources struct {
			ADSConfig struct {
				GRPCServices []struct {
					EnvoyGRPC struct {
						ClusterName string `json:"cluster_name"`
					} `json:"envoy_grpc"`
				} `json:"grpc_services"`
			} `json:"ads_config"`
		} `json:"dynamic_resources"`
		StaticResources struct {
			Clusters []struct {
				Name           string `json:"name"`
				LoadAssignment struct {
					Endpoints []struct {
						LBEndpoints []struct {
							Endpoint struct {
								Address struct {
									SocketAddress struct {
										Address   string `json:"address"`
										PortValue int    `json:"port_value"`
									} `json:"socket_address"`
								} `json:"address"`
							} `json:"endpoint"`
						} `json:"lb_endpoints"`
					} `json:"endpoints"`
				} `json:"load_assignment"`
			} `json:"clusters"`
		} `json:"static_resources"`
	}
	if err := yaml.Unmarshal(b, &boot); err != nil {
		return "", "", err
	}
	svcs := boot.DynamicResources.ADSConfig.GRPCServices
	if len(svcs) == 0 || svcs[0].EnvoyGRPC.ClusterName == "" {
		return "", "", fmt.Errorf("no dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name")
	}
	for _, cl := range boot.StaticResources.Clusters {
		if cl.Name != svcs[0].EnvoyGRPC.ClusterName {
			continue
		}
		for _, e := range cl.LoadAssignment.Endpoints {
			for _, lb := range e.LBEndpoints {
				sa := lb.Endpoint.Address.SocketAddress
				return sa.Address, strconv.Itoa(sa.PortValue), nil
			}
		}
	}
	return "", "", fmt.Errorf("no static cluster %q with an endpoint", svcs[0].EnvoyGRPC.ClusterName)
}
