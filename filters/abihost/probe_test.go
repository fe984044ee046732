package abihost_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
)

var (
	probeOnce sync.Once
	probePath string
	probeErr  error
)

// probeHost runs the host on the probe library (./probe), built once.
func probeHost(t *testing.T) *host {
	t.Helper()
	build(t)
	probeOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		probePath = filepath.Join(workDir, "probe.so")
		cmd := exec.Command(goBin, "build", "-buildmode=c-shared", "-o", probePath, "github.com/goambient/goambient/filters/abihost/probe")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			probeErr = fmt.Errorf("building probe.so: %v\n%s", err, out)
		}
	})
	if probeErr != nil {
		t.Fatal(probeErr)
	}
	h := startHostOn(t, probePath)
	a, err := anypb.New(&structpb.Struct{})
	if err != nil {
		t.Fatal(err)
	}
	if !h.config("p", "abihost.probe", a) {
		t.Fatalf("probe config rejected: %q", h.takeLogs())
	}
	return h
}

func probeReq(h *host, mode string, extra ...string) result {
	h.tb.Helper()
	h.takeLogs()
	f := append([]string{"req", counter(), "cfg=p", "h=:method:GET", "h=:path:/p?q=1", "h=:authority:probe", "h=:scheme:http", "h=x-probe:" + mode}, extra...)
	h.send(f...)
	return parseResult(h.expect("result"), h.takeLogs())
}

func lines(body string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(body, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		} else if k, v, ok := strings.Cut(l, "!"); ok {
			m[k] = "!" + v
		}
	}
	return m
}

// TestProbeABI drives the host's side of the ABI the authz filter does not reach: header
// writes, filter state writes, stream info and properties, gauges, buffers, trailers, Running
// with a Continue or a local reply from a goroutine, panics, on-log.
func TestProbeABI(t *testing.T) {
	h := probeHost(t)

	t.Run("stream info and properties", func(t *testing.T) {
		r := probeReq(h, "headers", "h=x-in:raw-value", "h=x-del:gone", "h=x-add:orig", "src=10.0.0.1:43210", "dst=10.0.0.2:8080",
			"routename=r1", "san=spiffe://a", "san=spiffe://b")
		if r.kind != "local_reply" || r.status != 200 || r.details != "probe_headers" {
			t.Fatalf("%s", r.line)
		}
		got := lines(r.body)
		for k, want := range map[string]string{
			"raw":                        "raw-value",
			"state":                      "probe-value",
			"missing_state":              "",
			"protocol":                   "HTTP/1.1",
			"local":                      "10.0.0.2:8080",
			"remote":                     "10.0.0.1:43210",
			"route":                      "r1",
			"sans":                       `["spiffe://a" "spiffe://b"]`,
			"response_code_before_reply": "false",
			"request.method":             "GET",
			"request.url_path":           "/p",
			"source.port":                "43210",
			"connection.mtls":            "true",
			"request.headers":            "!" + api.ErrSerializationFailure.Error(),
			"no.such.attribute":          "!" + api.ErrValueNotFound.Error(),
			"requests":                   "1",
		} {
			if got[k] != want {
				t.Errorf("%s = %q, want %q (body %q)", k, got[k], want, r.body)
			}
		}
		hs := strings.Split(got["headers"], ",")
		for _, want := range []string{":method:GET", "x-set:1", "x-add:orig", "x-add:a", "x-add:b", "x-in:raw-value"} {
			if !slices.Contains(hs, want) {
				t.Errorf("Range lacks %q: %q", want, hs)
			}
		}
		if slices.Contains(hs, "x-del:gone") {
			t.Errorf("Range still has x-del: %q", hs)
		}
		// SendLocalReply's headers: empty values are skipped (cgo.cc modify_headers).
		if !slices.Equal(r.headers["x-probe"], []string{"headers"}) || r.headers["x-empty"] != nil {
			t.Errorf("reply headers %v", r.headers)
		}
		if !slices.ContainsFunc(r.logs, func(l string) bool {
			return strings.Contains(l, "onlog mode=headers code=200 details=probe_headers resp_status=200 method=GET")
		}) {
			t.Errorf("on-log did not see the reply: %q", r.logs)
		}
	})

	t.Run("header writes reach the request", func(t *testing.T) {
		r := probeReq(h, "mutate", "h=x-del:gone", "h=x-add:orig", "h=x-set:old", "show=1")
		if r.kind != "continued" {
			t.Fatalf("%s", r.line)
		}
		want := []string{":method:GET", ":path:/p?q=1", ":authority:probe", ":scheme:http", "x-probe:mutate", "x-add:orig", "x-set:1", "x-add:b"}
		if !slices.Equal(r.upstream, want) {
			t.Errorf("upstream headers %q, want %q (setCopy = remove + append)", r.upstream, want)
		}
	})

	t.Run("Running then Continue from a goroutine", func(t *testing.T) {
		r := probeReq(h, "async", "fs=io.istio.peer_principal=spiffe://x", "show=1")
		if r.kind != "continued" || !strings.HasPrefix(r.goStatus, "0,") || !slices.Contains(r.upstream, "x-async:spiffe://x") {
			t.Errorf("%s", r.line)
		}
	})

	t.Run("Running then a local reply from a goroutine", func(t *testing.T) {
		r := probeReq(h, "async-reply")
		if r.kind != "local_reply" || r.status != 418 || r.body != "async" || r.details != "probe_async_reply" || !strings.HasPrefix(r.goStatus, "0,") {
			t.Errorf("%s", r.line)
		}
	})

	t.Run("panic", func(t *testing.T) {
		r := probeReq(h, "panic")
		if r.kind != "local_reply" || r.status != 500 || r.body != "error happened in filter\r\n" || r.details != "" {
			t.Errorf("%s", r.line)
		}
		if !slices.ContainsFunc(r.logs, func(l string) bool { return strings.Contains(l, "probe panic") }) {
			t.Errorf("the panic was not logged: %q", r.logs)
		}
	})

	t.Run("buffer", func(t *testing.T) {
		r := probeReq(h, "body", "body=abc")
		got := lines(r.body)
		if r.kind != "local_reply" || r.goStatus[:4] != "3,2," && r.goStatus[:4] != "3,1," {
			t.Errorf("%s", r.line)
		}
		for k, want := range map[string]string{"before": "abc", "after": "<abc>", "end": "true", "set": "ABC", "len": "3"} {
			if got[k] != want {
				t.Errorf("%s = %q, want %q (body %q)", k, got[k], want, r.body)
			}
		}
	})

	t.Run("trailers", func(t *testing.T) {
		r := probeReq(h, "trailers", "body=x", "trailer=x-trailer:tv")
		got := lines(r.body)
		if r.kind != "local_reply" || got["trailer"] != "tv" || got["seen"] != "tv" || r.goStatus[:6] != "2,2,1," {
			t.Errorf("%s", r.line)
		}
	})

	st := h.stats()
	if st["counter probe.requests"] != 7 || st["gauge probe.in_flight"] != 0 || st["counter golang.panic_error"] != 1 {
		t.Errorf("stats %v: want probe.requests 7, probe.in_flight 0, golang.panic_error 1", st)
	}
}
