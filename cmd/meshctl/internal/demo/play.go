package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	// callDeadline bounds how long a call is retried until its result matches (a policy takes
	// effect "within a few seconds"); the configuration is already known to be on the ztunnels.
	callDeadline = 10 * time.Second
	// logDeadline bounds how long a log line may take to appear after the call that causes it.
	logDeadline = 5 * time.Second
)

// player plays one scenario on a stack and counts the checks.
type player struct {
	s        *stack
	w        func(format string, args ...any)
	passed   int
	failures []string
}

func (p *player) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.failures = append(p.failures, msg)
	p.w("    ✗ %s\n", strings.ReplaceAll(msg, "\n", "\n      "))
}

// apply changes the config folder as the step says.
func (p *player) apply(st Step) error {
	s := p.s
	for _, f := range st.Apply {
		b, err := s.render(f, nil)
		if err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(s.configDir, f), b); err != nil {
			return err
		}
		p.w("  $ kubectl apply -f %s\n", f)
	}
	for _, f := range st.Delete {
		if err := os.Remove(filepath.Join(s.configDir, f)); err != nil {
			return err
		}
		p.w("  $ kubectl delete -f %s\n", f)
	}
	if pt := st.Patch; pt != nil {
		b, err := s.render(pt.File, pt)
		if err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(s.configDir, pt.File), b); err != nil {
			return err
		}
		p.w("  $ kubectl apply -f %s   # with %q instead of %q\n", pt.File, pt.With, pt.Replace)
	}
	return nil
}

func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp~"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// step plays one step: apply, wait for the configuration, then each call and log.
func (p *player) step(ctx context.Context, i int, st Step) {
	s := p.s
	p.w("\nstep %d (README step %d): %s\n", i+1, st.Readme, st.Title)
	marks := map[string]int{}
	for n, z := range s.ztunnels {
		marks[n] = z.out.Len()
	}
	alMark := int64(0)
	if fi, err := os.Stat(s.accessLog); err == nil {
		alMark = fi.Size()
	}
	checks := len(st.Calls) + len(st.Logs)
	if err := p.apply(st); err != nil {
		p.fail("step %d: %v (%d checks not run)", i+1, err, checks)
		return
	}
	if err := s.waitSynced(ctx); err != nil {
		p.fail("step %d: %v (%d checks not run)", i+1, err, checks)
		return
	}
	p.w("    (xdsserver pushed the change; every ztunnel holds it)\n")
	if st.Waypoint {
		if err := s.startWaypoint(ctx); err != nil {
			p.fail("step %d: %v (%d checks not run)", i+1, err, checks)
			return
		}
		p.w("    (waypoint %s/%s has its configuration)\n", s.wp.namespace, s.wp.pod)
	}
	if st.Gateway {
		if err := s.startGateway(ctx); err != nil {
			p.fail("step %d: %v (%d checks not run)", i+1, err, checks)
			return
		}
		p.w("    (gateway %s has its listeners and routes)\n", s.gw.key)
	}
	for _, c := range st.Calls {
		p.call(ctx, c)
	}
	for _, l := range st.Logs {
		switch {
		case l.Ztunnel != "":
			p.ztunnelLog(ctx, l, marks[l.Ztunnel])
		case l.AccessLog != nil:
			p.accessLogLine(ctx, l.AccessLog, alMark)
		case l.TLS != nil:
			p.tls(*l.TLS)
		}
	}
}

// call runs one curl, retried until its result matches or callDeadline passes.
func (p *player) call(ctx context.Context, c Call) {
	s := p.s
	var from, socks, dial, via string
	var err error
	if c.From == outside {
		if dial, err = s.gatewayDial(c.URL); err != nil {
			p.fail("%v", err)
			return
		}
		via = "outside the mesh, to the gateway at " + dial
	} else if from, err = s.podIP(c.From); err != nil {
		p.fail("%v", err)
		return
	}
	w, _ := s.workload(c.From)
	if c.From == outside {
		// dial and via are set: a plain client to the gateway
	} else if c.Plaintext {
		dial, err = s.kubeProxy(c.URL, w.Namespace)
		if err != nil {
			p.fail("%v", err)
			return
		}
		via = "plaintext, no ztunnel"
	} else {
		socks = s.hosts[w.Node] + ":15080"
		via = "through ztunnel " + w.Node
	}
	cmd := "curl"
	if c.Method != "" {
		cmd += " -X " + c.Method
	}
	if c.Data != "" {
		cmd += " -d '" + c.Data + "'"
	}
	cmd += " " + c.URL
	deadline := time.Now().Add(callDeadline)
	var res Result
	var mismatch string
	attempts := 0
	for {
		attempts++
		id := ""
		if c.AccessLog != nil {
			id = newRequestID()
		}
		res = curl(ctx, socks, from, dial, c.Method, c.URL, c.Data, id)
		mismatch = check(c, res)
		if mismatch == "" && c.AccessLog != nil {
			mismatch = p.checkAccessLog(ctx, id, c.AccessLog)
		}
		if mismatch == "" || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	shown := res.String()
	if len(c.Chain) > 0 && res.Status != 0 {
		if ch := chainString(res.Body); ch != "" {
			shown = fmt.Sprintf("%d %s; chain: %s", res.Status, httpText(res.Status), ch)
		}
	}
	if c.AccessLog != nil && mismatch == "" {
		shown += "; waypoint access log: " + fields(c.AccessLog)
	}
	where := from + ", " + via
	if from == "" {
		where = via
	}
	p.w("  $ %-48s # from %s (%s)\n      → %s\n", cmd, c.From, where, shown)
	if attempts > 1 && mismatch == "" {
		p.w("      (after %d attempts: the change took effect)\n", attempts)
	}
	if mismatch == "" && c.Sample != nil {
		mismatch = p.sample(ctx, c, cmd, socks, from, dial)
	}
	if mismatch != "" {
		p.fail("%s from %s: %s", cmd, c.From, mismatch)
		p.showLogs()
		return
	}
	p.passed++
}

func httpText(code int) string {
	r := Result{Status: code}
	return strings.TrimPrefix(r.String(), strconv.Itoa(code)+" ")
}

// check compares a result with the call's expectation ("" when it matches).
func check(c Call, r Result) string {
	if c.Closed {
		if !r.Closed() {
			return "expected no HTTP response (connection closed), got " + r.String()
		}
		return ""
	}
	if r.Status != c.Status {
		return fmt.Sprintf("expected %d, got %s", c.Status, r.String())
	}
	if c.Body != "" && !strings.Contains(r.Body, c.Body) {
		return fmt.Sprintf("expected a body with %q, got %q", c.Body, oneLine(r.Body, 200))
	}
	if len(c.Chain) > 0 {
		if err := chainOK(r.Body, c.Chain); err != nil {
			return fmt.Sprintf("expected the chain %s each hop 200: %v", strings.Join(c.Chain, " → "), err)
		}
	}
	return ""
}

// kubeProxy resolves a Service URL to one of its pods' podIP:targetPort, as kube-proxy does
// for a client outside the mesh.
func (s *stack) kubeProxy(rawURL, ns string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	port := uint32(80)
	if u.Port() != "" {
		n, err := strconv.Atoi(u.Port())
		if err != nil {
			return "", err
		}
		port = uint32(n)
	}
	host := u.Hostname()
	for _, sv := range s.full.Services {
		names := []string{sv.Hostname, sv.Name + "." + sv.Namespace, sv.Name + "." + sv.Namespace + ".svc"}
		if sv.Namespace == ns {
			names = append(names, sv.Name)
		}
		match := false
		for _, n := range names {
			match = match || n == host
		}
		if !match {
			continue
		}
		for _, w := range s.full.Workloads {
			for _, ws := range w.Services {
				if ws.Service.Key() != sv.Key() {
					continue
				}
				for _, pm := range ws.Ports {
					if pm.ServicePort == port && len(w.IPs) > 0 {
						return netip.AddrPortFrom(w.IPs[0], uint16(pm.TargetPort)).String(), nil
					}
				}
			}
		}
		return "", fmt.Errorf("service %s has no endpoint for port %d", sv.Key(), port)
	}
	return "", fmt.Errorf("%s: no such service", host)
}

// ztunnelLog waits for a line of the node's ztunnel, written in this step, with every substring.
func (p *player) ztunnelLog(ctx context.Context, l Log, mark int) {
	s := p.s
	var subs []string
	for _, a := range l.All {
		e, err := s.expand(a)
		if err != nil {
			p.fail("log check: %v", err)
			return
		}
		subs = append(subs, e)
	}
	z := s.ztunnels[l.Ztunnel]
	var found string
	s.poll(ctx, logDeadline, "log line", nil, func() bool {
		found = firstMatch(z.out.since(mark), subs)
		return found != ""
	})
	if found == "" {
		p.fail("ztunnel %s: expected a log line with all of:\n  %s\nits lines in this step:\n  %s", l.Ztunnel,
			strings.Join(subs, "\n  "), strings.Join(lastN(z.out.since(mark), 12), "\n  "))
		return
	}
	p.w("  ztunnel %s log:\n      %s\n", l.Ztunnel, found)
	p.passed++
}

func firstMatch(lines, subs []string) string {
next:
	for _, l := range lines {
		for _, sub := range subs {
			if !strings.Contains(l, sub) {
				continue next
			}
		}
		return l
	}
	return ""
}

func lastN(lines []string, n int) []string {
	if len(lines) > n {
		return lines[len(lines)-n:]
	}
	return lines
}

// accessLogLine waits for a line of the waypoint's JSON access log, written in this step, with
// the fields; "" means the field is absent, null, "" or "-".
func (p *player) accessLogLine(ctx context.Context, want map[string]string, mark int64) {
	s := p.s
	var found string
	var lines []string
	s.poll(ctx, logDeadline, "access log line", nil, func() bool {
		lines = readFrom(s.accessLog, mark)
		for _, l := range lines {
			if accessLogMatch(l, want) {
				found = l
				return true
			}
		}
		return false
	})
	if found == "" {
		var exp []string
		for k, v := range want {
			exp = append(exp, fmt.Sprintf("%s=%q", k, v))
		}
		p.fail("waypoint access log: expected a line with %s; its lines in this step:\n  %s", strings.Join(exp, " "), strings.Join(lastN(lines, 8), "\n  "))
		return
	}
	p.w("  waypoint access log:\n      %s\n", found)
	p.passed++
}

func accessLogMatch(line string, want map[string]string) bool {
	var m map[string]any
	if json.Unmarshal([]byte(line), &m) != nil {
		return false
	}
	for k, v := range want {
		got, ok := m[k]
		s := ""
		if ok && got != nil {
			s = fmt.Sprint(got)
		}
		if v == "" && s == "-" {
			s = ""
		}
		if s != v {
			return false
		}
	}
	return true
}

func readFrom(path string, off int64) []string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < off {
		return nil
	}
	s := string(b[off:])
	i := strings.LastIndexByte(s, '\n')
	if i < 0 {
		return nil
	}
	return strings.Split(s[:i], "\n")
}

func (p *player) tls(t TLSProbe) {
	to, err := p.s.expand(t.To)
	if err != nil {
		p.fail("tls probe: %v", err)
		return
	}
	desc, err := probeTLS(to, t.Identity)
	if err != nil {
		p.fail("port 15008: %s %v", desc, err)
		return
	}
	p.w("  port 15008 speaks TLS only:\n      %s\n", desc)
	p.passed++
}

// showLogs prints the last lines of each process, for a mismatch.
func (p *player) showLogs() {
	for _, pr := range p.s.procs() {
		p.w("      last lines of %s (%s):\n        %s\n", pr.name, pr.exitStatus(), strings.Join(pr.out.tail(6), "\n        "))
	}
}
