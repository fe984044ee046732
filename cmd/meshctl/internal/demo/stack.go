package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/source/files"
)

// appOffset is ztunnel's default --app-offset: the app of pod a.b.c.d listens on a.(b+100).c.d.
const appOffset = 100

// stack is everything one scenario runs: xdsserver, one ztunnel per node, the apps, and the
// embedded waypoint when the scenario has one.
type stack struct {
	sc        *Scenario
	example   string // manifests/examples/<name>
	dir       string // work folder: config/, svids/, logs
	configDir string // xdsserver's --config-dir: the "cluster"
	svids     string
	bins      *Binaries
	out       io.Writer

	cni      *cni
	full     *model.Mesh       // the mesh with every file of the scenario: where things are
	hosts    map[string]string // node → loopback address of its ztunnel's own listeners
	xds      *proc
	xdsAddr  string
	xdsHTTP  string // xdsserver's /metrics and /healthz/ready listener
	ztunnels map[string]*proc
	apps     []*http.Server
	stops    []func() // other servers' stops (OPA)
	appAddrs []string

	wp         *waypointInfo
	wpProc     *proc
	wpReserved net.Listener // the waypoint pod's HBONE address, until the waypoint starts
	wpErr      error        // why the embedded waypoint is not available
	wpReadyURL string
	accessLog  string

	gw     *gatewayInfo // the ingress gateway (gateway.go), when the scenario has one
	gwProc *proc
}

// waypointInfo is the waypoint pod as xdsserver's model names and places it.
type waypointInfo struct {
	gateway, pod, namespace, sa, node string
	ip                                netip.Addr
	nodeID                            string
}

// loopbackModel is the model configuration of `xdsserver --loopback --pod-cidr podCIDR`.
func loopbackModel(podCIDR netip.Prefix) model.Config {
	cfg := model.DefaultConfig()
	cfg.Placement = model.LoopbackPlacement
	cfg.Placement.PodCIDR = podCIDR
	return cfg
}

// loadMesh builds the mesh of a folder or file as xdsserver --loopback --pod-cidr podCIDR does.
func loadMesh(podCIDR netip.Prefix, paths ...string) (*model.Mesh, error) {
	return files.New(files.Options{Paths: paths, Model: loopbackModel(podCIDR)}).Load()
}

// newStack prepares the work folder and computes where everything will be.
func newStack(sc *Scenario, root, dir string, bins *Binaries, out io.Writer) (*stack, error) {
	s := &stack{sc: sc, example: filepath.Join(root, "manifests", "examples", sc.Name), dir: dir,
		configDir: filepath.Join(dir, "config"), svids: filepath.Join(dir, "svids"), bins: bins, out: out,
		hosts: map[string]string{}, ztunnels: map[string]*proc{}}
	all := filepath.Join(dir, "all")
	for _, d := range []string{s.configDir, all} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	s.cni = newCNI()
	for _, f := range sc.Files() {
		b, err := s.render(f, nil)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(all, f), b, 0o644); err != nil {
			return nil, err
		}
	}
	m, err := loadMesh(s.cni.wp, all)
	if err != nil {
		return nil, err
	}
	for _, e := range m.Errors {
		return nil, fmt.Errorf("the scenario's files: %v", e)
	}
	s.full = m
	// The nodes' own listeners (SOCKS5, admin, metrics, readiness) on a random 127.x address,
	// outside the pod and service ranges of the loopback placement.
	base := fmt.Sprintf("127.%d.%d", 200+rand.IntN(50), 1+rand.IntN(250))
	for i, n := range sc.Nodes {
		s.hosts[n] = fmt.Sprintf("%s.%d", base, 10+i)
	}
	s.hosts[""] = base + ".9" // the waypoint's readiness
	if sc.Waypoint != "" {
		for _, w := range m.Waypoints {
			if w.Key() != sc.Waypoint || len(w.Instances) == 0 || len(w.Instances[0].IPs) == 0 {
				continue
			}
			pod := w.Instances[0]
			s.wp = &waypointInfo{gateway: w.Key(), pod: pod.Name, namespace: pod.Namespace, sa: pod.ServiceAccount, node: pod.Node, ip: pod.IPs[0]}
			s.wp.nodeID = fmt.Sprintf("waypoint~%s~%s.%s~%s.svc.%s", pod.IPs[0], pod.Name, pod.Namespace, pod.Namespace, m.ClusterDomain)
		}
		if s.wp == nil {
			return nil, fmt.Errorf("the model has no waypoint pod for Gateway %s", sc.Waypoint)
		}
	}
	if sc.Gateway != "" {
		if err := s.planGateway(m); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// render reads a file of the example, applies the patch (if any) and gives its pods their
// addresses.
func (s *stack) render(file string, patch *Patch) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(s.example, file))
	if err != nil {
		return nil, err
	}
	if patch != nil {
		patched := strings.Replace(string(b), patch.Replace, patch.With, 1)
		if patched == string(b) {
			return nil, fmt.Errorf("patch: %s has no %q", file, patch.Replace)
		}
		b = []byte(patched)
	}
	out, err := s.cni.place(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return out, nil
}

// workload returns the pod "ns/name" of the full mesh.
func (s *stack) workload(key string) (*model.Workload, error) {
	for _, w := range s.full.Workloads {
		if w.Key() == key {
			return w, nil
		}
	}
	return nil, fmt.Errorf("no pod %s in the scenario's files", key)
}

// podIP returns the address of pod "ns/name".
func (s *stack) podIP(key string) (string, error) {
	w, err := s.workload(key)
	if err != nil {
		return "", err
	}
	if len(w.IPs) == 0 {
		return "", fmt.Errorf("pod %s has no address", key)
	}
	return w.IPs[0].String(), nil
}

// expand replaces ${ip:ns/pod}, ${vip:ns/svc} and ${waypoint-ip}.
func (s *stack) expand(str string) (string, error) {
	var errs []error
	out := placeholder.ReplaceAllStringFunc(str, func(m string) string {
		kind, key, _ := strings.Cut(m[2:len(m)-1], ":")
		switch kind {
		case "ip":
			ip, err := s.podIP(key)
			errs = append(errs, err)
			return ip
		case "vip":
			for _, sv := range s.full.Services {
				if sv.Key() == key && len(sv.VIPs) > 0 {
					return sv.VIPs[0].String()
				}
			}
			errs = append(errs, fmt.Errorf("no service %s with a VIP", key))
		case "waypoint-ip":
			if s.wp != nil {
				return s.wp.ip.String()
			}
			errs = append(errs, errors.New("no waypoint"))
		default:
			errs = append(errs, fmt.Errorf("unknown placeholder %s", m))
		}
		return m
	})
	return out, errors.Join(errs...)
}

var placeholder = regexp.MustCompile(`\$\{[a-z-]+(:[^}]*)?\}`)

// start issues certificates and starts xdsserver, the ztunnels, the apps and the waypoint.
func (s *stack) start(ctx context.Context) error {
	mc := s.bins.Path["meshctl"]
	if err := run(mc, "certs", "root", "--dir", s.svids); err != nil {
		return err
	}
	if err := run(mc, "certs", "issue-from-mesh", "--dir", s.svids, "-f", s.example); err != nil {
		return err
	}
	if s.wp != nil {
		// Nobody deploys the waypoint here: its identity is the one istiod would give its pod.
		if err := run(mc, "certs", "issue", "--dir", s.svids, "--ns", s.wp.namespace, "--sa", s.wp.sa); err != nil {
			return err
		}
	}

	var err error
	s.xds, err = startProc("xdsserver", filepath.Join(s.dir, "xdsserver.log"), s.bins.Path["xdsserver"],
		"--config-dir", s.configDir, "--loopback", "--pod-cidr", s.cni.wp.String(), "--xds-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--interval", "200ms")
	if err != nil {
		return err
	}
	var httpAddr string
	if err := s.poll(ctx, 15*time.Second, "xdsserver to listen", s.xds, func() bool {
		for _, l := range s.xds.out.since(0) {
			if m := startedLine.FindStringSubmatch(l); m != nil {
				s.xdsAddr, httpAddr = strings.Trim(m[1], `"`), strings.Trim(m[2], `"`)
				s.xdsHTTP = httpAddr
				return true
			}
		}
		return false
	}); err != nil {
		return err
	}
	if err := s.poll(ctx, 15*time.Second, "xdsserver ready", s.xds, func() bool { return httpOK("http://" + httpAddr + "/healthz/ready") }); err != nil {
		return err
	}
	fmt.Fprintf(s.out, "  started %-28s xDS %s, config folder %s\n", "xdsserver", s.xdsAddr, s.configDir)
	fmt.Fprintf(s.out, "  (pods get their addresses in %s.0/24 from the demo, as from a CNI: status.podIP)\n", s.cni.net)

	if err := s.startApps(); err != nil {
		return err
	}
	for _, n := range s.sc.Nodes {
		h := s.hosts[n]
		p, err := startProc("ztunnel "+n, filepath.Join(s.dir, "ztunnel-"+n+".log"), s.bins.Path["ztunnel"],
			"--node", n, "--xds-address", s.xdsAddr, "--svid-dir", s.svids, "--loopback",
			"--socks5", h+":15080", "--admin", h+":15000", "--metrics", h+":15020", "--readiness", h+":15021", "--drain-grace", "1s")
		if err != nil {
			return err
		}
		s.ztunnels[n] = p
		if err := s.poll(ctx, 15*time.Second, "ztunnel "+n+" ready", p, func() bool { return httpOK("http://" + h + ":15021/healthz/ready") }); err != nil {
			return err
		}
		fmt.Fprintf(s.out, "  started %-28s SOCKS5 %s:15080, admin %s:15000\n", "ztunnel "+n, h, h)
	}
	if s.wp != nil {
		s.reserveWaypoint()
	}
	return nil
}

var startedLine = regexp.MustCompile(`xdsserver started.* xds=(\S+) http=(\S+)`)

// startApps serves each app on its pod's private address, on each target port of its services.
func (s *stack) startApps() error {
	for _, a := range s.sc.Apps {
		w, err := s.workload(a.Pod)
		if err != nil {
			return err
		}
		ip := w.IPs[0]
		var h http.Handler
		switch a.Kind {
		case "echo":
			h = echoApp(w.Name)
		case "httpbin":
			h = httpbinApp(w.Name)
		case "chain":
			h = chainApp(w.Name, ip.String(), s.hosts[w.Node]+":15080", a.Upstream)
		case "opa": // gRPC: served below
		default:
			return fmt.Errorf("app %s: unknown kind %q", a.Pod, a.Kind)
		}
		ports := map[uint32]bool{}
		for _, ws := range w.Services {
			for _, pm := range ws.Ports {
				ports[pm.TargetPort] = true
			}
		}
		if len(ports) == 0 {
			return fmt.Errorf("app %s: its pod is behind no service port", a.Pod)
		}
		b := ip.As4()
		appIP := netip.AddrFrom4([4]byte{b[0], b[1] + appOffset, b[2], b[3]})
		if !w.Ambient {
			appIP = ip // outside the mesh no ztunnel holds the pod's address: the app listens on it
		}
		for port := range ports {
			addr := netip.AddrPortFrom(appIP, uint16(port)).String()
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("app %s: %w", a.Pod, err)
			}
			s.appAddrs = append(s.appAddrs, addr)
			if a.Kind == "opa" {
				if err := s.serveOPA(ln); err != nil {
					ln.Close()
					return fmt.Errorf("app %s: %w", a.Pod, err)
				}
				fmt.Fprintf(s.out, "  started %-28s pod %s on node %s, OPA's Authorization API on %s\n", "app "+w.Name+" (opa)", ip, w.Node, addr)
				continue
			}
			srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
			go srv.Serve(ln)
			s.apps = append(s.apps, srv)
			fmt.Fprintf(s.out, "  started %-28s pod %s on node %s, app listening on %s\n", "app "+w.Name+" ("+a.Kind+")", ip, w.Node, addr)
		}
	}
	return nil
}

// reserveWaypoint holds the waypoint pod's HBONE address until the waypoint starts, as the
// pod's own network namespace would, so that nothing else on the machine takes it meanwhile.
func (s *stack) reserveWaypoint() {
	if _, ok := s.bins.Path["waypoint"]; !ok {
		s.wpErr = s.bins.Err["waypoint"]
		fmt.Fprintf(s.out, "  embedded waypoint not available: %v\n", s.wpErr)
		return
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(s.wp.ip, model.HBONEPort).String())
	if err != nil {
		s.wpErr = fmt.Errorf("the waypoint pod's address: %w", err)
		return
	}
	s.wpReserved = ln
}

// startWaypoint starts the embedded waypoint, after its Gateway was applied (as istiod deploys
// it then), on the address the model gives the waypoint pod, and waits until it says it has its
// configuration. A failure is kept: every step that needs the waypoint fails, saying why.
func (s *stack) startWaypoint(ctx context.Context) error {
	if s.wpErr == nil && s.wpProc == nil {
		s.wpErr = s.launchWaypoint()
	}
	if s.wpErr != nil {
		return fmt.Errorf("embedded waypoint not available: %w", s.wpErr)
	}
	if err := s.poll(ctx, 20*time.Second, "the waypoint's /healthz/ready", s.wpProc, func() bool { return httpOK(s.wpReadyURL) }); err != nil {
		return fmt.Errorf("embedded waypoint not available: %w; its last lines:\n  %s", err, strings.Join(s.wpProc.out.tail(4), "\n  "))
	}
	return nil
}

func (s *stack) launchWaypoint() error {
	s.accessLog = filepath.Join(s.dir, "waypoint-access.log")
	ready := s.hosts[""] + ":15021"
	s.wpReadyURL = "http://" + ready + "/healthz/ready"
	if s.wpReserved != nil {
		s.wpReserved.Close()
		s.wpReserved = nil
	}
	p, err := startProc("waypoint", filepath.Join(s.dir, "waypoint.log"), s.bins.Path["waypoint"],
		"--xds-address", s.xdsAddr, "--node-id", s.wp.nodeID, "--listen", netip.AddrPortFrom(s.wp.ip, model.HBONEPort).String(),
		"--svid-dir", s.svids, "--ready-listen", ready, "--access-log", s.accessLog,
		"--metrics-listen", s.hosts[""]+":15020")
	if err != nil {
		return err
	}
	s.wpProc = p
	fmt.Fprintf(s.out, "  started %-28s pod %s/%s (Gateway %s) on node %s, HBONE %s:15008\n", "waypoint", s.wp.namespace, s.wp.pod, s.wp.gateway, s.wp.node, s.wp.ip)
	return nil
}

// poll checks cond every 50ms until it holds, d passes, ctx ends, or p (if not nil) exits.
func (s *stack) poll(ctx context.Context, d time.Duration, what string, p *proc, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if p != nil && !p.running() {
			return fmt.Errorf("%s exited (%s) while waiting for %s; its last lines:\n    %s", p.name, p.exitStatus(), what, strings.Join(p.out.tail(15), "\n    "))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", d, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// stop stops everything started, in reverse order.
func (s *stack) stop() {
	if s.gwProc != nil {
		s.gwProc.stop(3 * time.Second)
	}
	if s.wpProc != nil {
		s.wpProc.stop(3 * time.Second)
	}
	if s.wpReserved != nil {
		s.wpReserved.Close()
	}
	for _, n := range s.sc.Nodes {
		if p := s.ztunnels[n]; p != nil {
			p.stop(3 * time.Second)
		}
	}
	for _, a := range s.apps {
		a.Close()
	}
	for _, stop := range s.stops {
		stop()
	}
	if s.xds != nil {
		s.xds.stop(3 * time.Second)
	}
}

// procs lists the started processes.
func (s *stack) procs() []*proc {
	var out []*proc
	if s.xds != nil {
		out = append(out, s.xds)
	}
	for _, n := range s.sc.Nodes {
		if p := s.ztunnels[n]; p != nil {
			out = append(out, p)
		}
	}
	if s.wpProc != nil {
		out = append(out, s.wpProc)
	}
	if s.gwProc != nil {
		out = append(out, s.gwProc)
	}
	return out
}

func run(bin string, args ...string) error {
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return nil
}

func httpOK(url string) bool {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
