package abihost_test

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/goambient/goambient/filters/authz"
	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
)

// The library and the host are built once per test binary, into a temporary directory.
var (
	workDir    string
	buildOnce  sync.Once
	soPath     string
	hostPath   string
	buildErr   error
	skipReason string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "abihost")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// build builds filters.so (go build -buildmode=c-shared) and host.c (gcc), or skips without gcc.
func build(tb testing.TB) {
	tb.Helper()
	buildOnce.Do(func() {
		if _, err := exec.LookPath("gcc"); err != nil {
			skipReason = "gcc not found: the ABI host needs a C compiler (Debian: apt-get install gcc libc6-dev)"
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		soPath = filepath.Join(workDir, "filters.so")
		cmd := exec.Command(goBin, "build", "-buildmode=c-shared", "-o", soPath, "github.com/goambient/goambient/filters/cmd/filters")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building filters.so: %v\n%s", err, out)
			return
		}
		hostPath = filepath.Join(workDir, "host")
		cmd = exec.Command("gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-rdynamic", "-o", hostPath, filepath.Join("c", "host.c"), "-ldl", "-lpthread")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building host.c: %v\n%s", err, out)
		}
	})
	if skipReason != "" {
		tb.Skip(skipReason)
	}
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
}

// host is one running host process: commands on its stdin, one line per answer on its stdout.
type host struct {
	tb     testing.TB
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	in     *bufio.Writer
	lines  chan string
	stderr *lockedBuffer
	logs   []string // log lines ("level<TAB>message") since the last answer
	dir    string
	files  int
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startHost runs the host on filters.so.
func startHost(tb testing.TB, env ...string) *host {
	tb.Helper()
	build(tb)
	return startHostOn(tb, soPath, env...)
}

func startHostOn(tb testing.TB, lib string, env ...string) *host {
	tb.Helper()
	h := &host{tb: tb, lines: make(chan string, 1024), stderr: &lockedBuffer{}, dir: tb.TempDir()}
	h.cmd = exec.Command(hostPath, lib)
	h.cmd.Env = append(os.Environ(), env...)
	h.cmd.Stderr = h.stderr
	var err error
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	h.in = bufio.NewWriterSize(h.stdin, 1<<16)
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	tb.Cleanup(h.close)
	h.expect("ready")
	return h
}

func (h *host) close() {
	if h.cmd.ProcessState != nil {
		return
	}
	fmt.Fprintln(h.in, "quit")
	h.in.Flush()
	h.stdin.Close()
	for range h.lines { // drain until the host exits
	}
	h.cmd.Wait()
}

func (h *host) send(fields ...string) {
	h.tb.Helper()
	if _, err := h.in.WriteString(strings.Join(fields, "\t") + "\n"); err != nil {
		h.tb.Fatalf("host stdin: %v; stderr:\n%s", err, h.stderr.String())
	}
	if err := h.in.Flush(); err != nil {
		h.tb.Fatalf("host stdin: %v; stderr:\n%s", err, h.stderr.String())
	}
}

// expect reads lines until one whose first field is kind and returns its fields. Log lines met
// on the way are kept in h.logs. The timeout only guards against a hung host.
func (h *host) expect(kind string) []string {
	h.tb.Helper()
	timeout := time.After(5 * time.Minute)
	for {
		select {
		case line, ok := <-h.lines:
			if !ok {
				h.cmd.Wait()
				h.tb.Fatalf("host exited (%v) while waiting for %q; stderr:\n%s", h.cmd.ProcessState, kind, h.stderr.String())
			}
			f := strings.Split(line, "\t")
			if f[0] == "log" && len(f) == 3 {
				h.logs = append(h.logs, f[1]+"\t"+unesc(f[2]))
				continue
			}
			if f[0] == kind {
				return f
			}
			h.tb.Fatalf("host: unexpected line %q while waiting for %q", line, kind)
		case <-timeout:
			h.tb.Fatalf("host: no %q line after 5 minutes; stderr:\n%s", kind, h.stderr.String())
		}
	}
}

func (h *host) takeLogs() []string {
	l := h.logs
	h.logs = nil
	return l
}

// file writes a serialized Any for the host, as Envoy holds plugin_config (SerializeToString).
func (h *host) file(a *anypb.Any) string {
	h.tb.Helper()
	b, err := proto.Marshal(a)
	if err != nil {
		h.tb.Fatal(err)
	}
	h.files++
	p := filepath.Join(h.dir, fmt.Sprintf("config-%d.pb", h.files))
	if err := os.WriteFile(p, b, 0o600); err != nil {
		h.tb.Fatal(err)
	}
	return p
}

// config creates a filter config (FilterConfig::newGoPluginConfig) and reports whether the
// library accepted it.
func (h *host) config(name, plugin string, a *anypb.Any) bool {
	h.tb.Helper()
	h.send("config", name, plugin, h.file(a))
	f := h.expect("config")
	return f[2] == "ok"
}

func (h *host) route(name string, a *anypb.Any) bool {
	h.tb.Helper()
	h.send("route", name, authzconfig.PluginName, h.file(a))
	f := h.expect("route")
	return f[2] == "ok"
}

func (h *host) stats() map[string]uint64 {
	h.tb.Helper()
	h.send("stats")
	m := map[string]uint64{}
	for {
		select {
		case line, ok := <-h.lines:
			if !ok {
				h.tb.Fatalf("host exited; stderr:\n%s", h.stderr.String())
			}
			f := strings.Split(line, "\t")
			switch f[0] {
			case "metric":
				v, _ := strconv.ParseUint(f[3], 10, 64)
				m[f[1]+" "+unesc(f[2])] = v
			case "stats":
				for _, kv := range f[2:] {
					k, v, _ := strings.Cut(kv, "=")
					n, _ := strconv.ParseUint(v, 10, 64)
					m[k] = n
				}
				return m
			case "log":
				h.logs = append(h.logs, f[1]+"\t"+unesc(f[2]))
			default:
				h.tb.Fatalf("host: unexpected line %q in stats", line)
			}
		case <-time.After(5 * time.Minute):
			h.tb.Fatal("host: no stats after 5 minutes")
		}
	}
}

// result is one request's outcome as the host printed it.
type result struct {
	kind               string // continued, local_reply, stopped
	status, filterCode int
	grpc               int64
	body, details      string
	headers            map[string][]string
	goStatus, destroy  string
	unregistered       bool
	notes              string
	upstream           []string
	upstreamBody       string
	logs               []string
	line               string
}

func parseResult(f []string, logs []string) result {
	r := result{kind: f[2], headers: map[string][]string{}, logs: logs, line: strings.Join(f, " ")}
	for _, kv := range f[3:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "status":
			r.status, _ = strconv.Atoi(v)
		case "filter_code":
			r.filterCode, _ = strconv.Atoi(v)
		case "grpc":
			r.grpc, _ = strconv.ParseInt(v, 10, 64)
		case "body":
			r.body = unesc(v)
		case "details":
			r.details = unesc(v)
		case "h":
			hk, hv, _ := strings.Cut(v, ":")
			if hk == "" { // a pseudo-header
				pk, pv, _ := strings.Cut(hv, ":")
				hk, hv = ":"+pk, pv
			}
			r.headers[unesc(hk)] = append(r.headers[unesc(hk)], unesc(hv))
		case "uh": // the request headers as they would go upstream, in order
			hk, hv, _ := strings.Cut(v, ":")
			if hk == "" {
				pk, pv, _ := strings.Cut(hv, ":")
				hk, hv = ":"+pk, pv
			}
			r.upstream = append(r.upstream, unesc(hk)+":"+unesc(hv))
		case "ubody":
			r.upstreamBody = unesc(v)
		case "go_status":
			r.goStatus = v
		case "destroy":
			r.destroy = v
		case "unregistered_plugin":
			r.unregistered = true
		case "notes":
			r.notes = v
		}
	}
	return r
}

func esc(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' || c < 0x20 || c == 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func unesc(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// call is one request, given to both hosts: envoytest gets the *http.Request, the C host the
// header map Envoy would build from it (envoytest's own rules: pseudo-headers, then every
// header lower-cased, Host dropped).
type call struct {
	name    string
	method  string
	url     string
	headers map[string]string
	body    string
	grpc    bool
	stream  envoytest.Stream
}

func (c call) request() *http.Request {
	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
	}
	r := httptest.NewRequest(c.method, c.url, body)
	for k, v := range c.headers {
		r.Header.Add(k, v)
	}
	if c.grpc {
		r.Header.Set("Content-Type", "application/grpc")
		r.ProtoMajor, r.ProtoMinor = 2, 0
	}
	return r
}

func (c call) fields(tb testing.TB, cfg, route string) []string {
	r := c.request()
	f := []string{"cfg=" + cfg}
	if route != "" {
		f = append(f, "route="+route)
	}
	path := r.RequestURI
	if path == "" || strings.Contains(path, "://") {
		path = r.URL.RequestURI()
	}
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	scheme := r.URL.Scheme
	if scheme == "" {
		scheme = "http"
	}
	f = append(f, "h=:method:"+esc(r.Method), "h=:path:"+esc(path))
	if host != "" {
		f = append(f, "h=:authority:"+esc(host))
	}
	f = append(f, "h=:scheme:"+esc(scheme))
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if strings.EqualFold(k, "host") {
			continue
		}
		for _, v := range r.Header[k] {
			f = append(f, "h="+esc(strings.ToLower(k))+":"+esc(v))
		}
	}
	if c.body != "" {
		f = append(f, "body="+esc(c.body))
	}
	if r.ProtoMajor == 2 {
		f = append(f, "proto=2")
	}
	s := c.stream
	fsKeys := make([]string, 0, len(s.FilterState))
	for k := range s.FilterState {
		fsKeys = append(fsKeys, k)
	}
	slices.Sort(fsKeys)
	for _, k := range fsKeys {
		f = append(f, "fs="+esc(k)+"="+esc(s.FilterState[k]))
	}
	if s.DownstreamRemoteAddress != "" {
		f = append(f, "src="+esc(s.DownstreamRemoteAddress))
	}
	if s.DownstreamLocalAddress != "" {
		f = append(f, "dst="+esc(s.DownstreamLocalAddress))
	}
	for _, san := range s.PeerURISANs {
		f = append(f, "san="+esc(san))
	}
	if s.RouteName != "" {
		f = append(f, "routename="+esc(s.RouteName))
	}
	for filterName, kv := range s.DynamicMetadata {
		st, err := structpb.NewStruct(kv)
		if err != nil {
			tb.Fatal(err)
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(st)
		if err != nil {
			tb.Fatal(err)
		}
		f = append(f, "md="+esc(filterName)+"="+hex.EncodeToString(b))
	}
	if len(s.Properties) > 0 || len(s.Secrets) > 0 {
		tb.Fatalf("%s: the host protocol has no extra properties or secrets", c.name)
	}
	return f
}

var (
	plugin  = envoytest.Plugin{Name: authzconfig.PluginName, Factory: authz.Factory, Parser: authz.Parser{}}
	reqSeq  int
	counter = func() string { reqSeq++; return strconv.Itoa(reqSeq) }
)

// do runs c through the C host and returns what it printed.
func (h *host) do(c call, cfg, route string) result {
	h.tb.Helper()
	h.takeLogs()
	h.send(append([]string{"req", counter()}, c.fields(h.tb, cfg, route)...)...)
	f := h.expect("result")
	return parseResult(f, h.takeLogs())
}

// envoyGRPCMessage is Envoy's grpc-message encoding of a local reply body
// (source/common/http/utility.cc PercentEncoding::encode with reserved "%").
func envoyGRPCMessage(body string) string {
	var b strings.Builder
	for i := 0; i < len(body); i++ {
		c := body[i]
		if c < ' ' || c >= '~' || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// same checks the host's outcome against envoytest's for one request. A difference is a bug in
// one of them; the ones already traced to envoytest are logged, not failed (see README.md).
func same(t *testing.T, c call, want envoytest.Response, got result) {
	t.Helper()
	if got.destroy != "0" {
		t.Errorf("%s: destroy reason %s, want 0 (Normal): %s", c.name, got.destroy, got.line)
	}
	if want.Continued {
		if got.kind != "continued" {
			t.Errorf("%s: envoytest continued, the host got %s", c.name, got.line)
		}
		return
	}
	lr := want.LocalReply
	if lr == nil {
		t.Fatalf("%s: envoytest neither continued nor replied", c.name)
	}
	if got.kind != "local_reply" {
		t.Errorf("%s: envoytest replied %d %q, the host got %s", c.name, lr.Status, lr.Details, got.line)
		return
	}
	if got.status != lr.Status || got.filterCode != lr.FilterCode || got.grpc != lr.GRPCStatus ||
		got.details != lr.Details || got.body != lr.Body {
		t.Errorf("%s: host %d (filter %d) grpc %d body %q details %q; envoytest %d (filter %d) grpc %d body %q details %q",
			c.name, got.status, got.filterCode, got.grpc, got.body, got.details,
			lr.Status, lr.FilterCode, lr.GRPCStatus, lr.Body, lr.Details)
	}
	for _, k := range []string{"content-type", "grpc-status"} {
		if !slices.Equal(got.headers[k], lr.Headers[k]) {
			t.Errorf("%s: header %s: host %q, envoytest %q", c.name, k, got.headers[k], lr.Headers[k])
		}
	}
	if em := lr.Headers["grpc-message"]; c.grpc && len(em) == 1 {
		// envoytest's grpc-message is url.PathEscape(body): recover the body the filter passed.
		body, err := url.PathUnescape(em[0])
		if err != nil {
			t.Fatal(err)
		}
		if m := got.headers["grpc-message"]; len(m) != 1 || m[0] != envoyGRPCMessage(body) {
			t.Errorf("%s: host grpc-message %q, Envoy's encoding of %q gives %q", c.name, m, body, envoyGRPCMessage(body))
		}
		if em[0] != envoyGRPCMessage(body) {
			t.Errorf("%s: envoytest differs from Envoy: grpc-message %q, Envoy sends %q (source/common/http/utility.cc PercentEncoding::encode escapes only < ' ', >= '~' and '%%')",
				c.name, em[0], envoyGRPCMessage(body))
		}
	}
	// Logs the filter wrote through cb.Log reach the host as Envoy log lines ("[http][plugin] msg").
	for _, l := range want.Logs {
		_, msg, _ := strings.Cut(l, ": ")
		if !slices.ContainsFunc(got.logs, func(g string) bool { return strings.Contains(g, msg) }) {
			t.Errorf("%s: envoytest logged %q; the host's logs: %q", c.name, l, got.logs)
		}
	}
}
