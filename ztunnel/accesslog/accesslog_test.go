package accesslog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func logText(opts *HandlerOptions, f func(*slog.Logger)) string {
	var buf bytes.Buffer
	if opts == nil {
		opts = &HandlerOptions{}
	}
	f(slog.New(NewHandler(&buf, opts)))
	return buf.String()
}

// The example of istio.io's "Troubleshoot ztunnel" page (reference §2.1): sleep → productpage.
func bookinfoOutbound() Entry {
	return Entry{
		Time:         at("2024-05-04T09:59:05.028771Z"),
		SrcAddr:      netip.MustParseAddrPort("10.244.1.12:58508"),
		SrcWorkload:  "sleep-7656cf8794-r7zb9",
		SrcNamespace: "default",
		SrcIdentity:  "spiffe://cluster.local/ns/default/sa/sleep",
		DstAddr:      netip.MustParseAddrPort("10.244.1.10:15008"),
		DstHBONEAddr: "10.244.1.10:9080",
		DstService:   "productpage.default.svc.cluster.local",
		DstWorkload:  "productpage-v1-87d54dd59-fn6vw",
		DstNamespace: "productpage",
		DstIdentity:  "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
		Direction:    Outbound,
		MTLS:         true,
		BytesSent:    80,
		BytesRecv:    175,
		Duration:     1*time.Millisecond + 700*time.Microsecond, // whole milliseconds: "1ms"
	}
}

func TestOutboundSuccess(t *testing.T) {
	e := bookinfoOutbound()
	got := logText(nil, func(l *slog.Logger) { e.Log(context.Background(), l) })
	want := "2024-05-04T09:59:05.028771Z\tinfo\taccess\tconnection complete\t" +
		`src.addr=10.244.1.12:58508 src.workload="sleep-7656cf8794-r7zb9" src.namespace="default" src.identity="spiffe://cluster.local/ns/default/sa/sleep" ` +
		`dst.addr=10.244.1.10:15008 dst.hbone_addr=10.244.1.10:9080 dst.service="productpage.default.svc.cluster.local" dst.workload="productpage-v1-87d54dd59-fn6vw" dst.namespace="productpage" dst.identity="spiffe://cluster.local/ns/default/sa/bookinfo-productpage" ` +
		`direction="outbound" bytes_sent=80 bytes_recv=175 duration="1ms"` + "\n"
	if got != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}

	// The line of istio.io's page, as printed there: the same, except that the page shows the
	// columns separated by spaces and an older ztunnel that quoted dst.hbone_addr.
	const istioIO = `2024-05-04T09:59:05.028771Z info access connection complete src.addr=10.244.1.12:58508 src.workload="sleep-7656cf8794-r7zb9" src.namespace="default" src.identity="spiffe://cluster.local/ns/default/sa/sleep" dst.addr=10.244.1.10:15008 dst.hbone_addr="10.244.1.10:9080" dst.service="productpage.default.svc.cluster.local" dst.workload="productpage-v1-87d54dd59-fn6vw" dst.namespace="productpage" dst.identity="spiffe://cluster.local/ns/default/sa/bookinfo-productpage" direction="outbound" bytes_sent=80 bytes_recv=175 duration="1ms"`
	normalized := strings.ReplaceAll(strings.TrimSuffix(got, "\n"), "\t", " ")
	normalized = strings.Replace(normalized, "dst.hbone_addr=10.244.1.10:9080", `dst.hbone_addr="10.244.1.10:9080"`, 1)
	if normalized != istioIO {
		t.Errorf("differs from istio.io's line beyond tabs and hbone_addr quoting:\n%s\n%s", normalized, istioIO)
	}
}

// A destination ztunnel refusing curl-deny under handson/layer4-authz (handson step 2).
func TestInboundDenyWithPolicy(t *testing.T) {
	e := Entry{
		Time:         at("2026-11-23T10:00:00.000001Z"),
		SrcAddr:      netip.MustParseAddrPort("127.0.1.3:40001"),
		SrcWorkload:  "curl-deny",
		SrcNamespace: "handson",
		SrcIdentity:  "spiffe://cluster.local/ns/handson/sa/curl-deny",
		DstAddr:      netip.MustParseAddrPort("127.0.2.1:15008"),
		DstHBONEAddr: "127.0.2.1:8080",
		DstService:   "handson.handson.svc.cluster.local",
		DstWorkload:  "handson-blue",
		DstNamespace: "handson",
		DstIdentity:  "spiffe://cluster.local/ns/handson/sa/handson-blue",
		Direction:    Inbound,
		MTLS:         true,
		Err:          DeniedBy("handson/layer4-authz"),
	}
	got := logText(nil, func(l *slog.Logger) { e.Log(context.Background(), l) })
	want := "2026-11-23T10:00:00.000001Z\terror\taccess\tconnection complete\t" +
		`src.addr=127.0.1.3:40001 src.workload="curl-deny" src.namespace="handson" src.identity="spiffe://cluster.local/ns/handson/sa/curl-deny" ` +
		`dst.addr=127.0.2.1:15008 dst.hbone_addr=127.0.2.1:8080 dst.service="handson.handson.svc.cluster.local" dst.workload="handson-blue" dst.namespace="handson" dst.identity="spiffe://cluster.local/ns/handson/sa/handson-blue" ` +
		`direction="inbound" bytes_sent=0 bytes_recv=0 duration="0ms" error="connection closed due to policy rejection: explicitly denied by: handson/layer4-authz"` + "\n"
	if got != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
	var pe *PolicyError
	if !errors.As(e.Err, &pe) || pe.Reason != "explicitly denied by: handson/layer4-authz" {
		t.Errorf("DeniedBy is not a *PolicyError with the reason: %#v", e.Err)
	}
}

// A line printed by Istio's ztunnel (its tab-separated layout), reproduced byte for byte.
func TestInboundNoAllowMatchedLikeIstio(t *testing.T) {
	e := Entry{
		Time:         at("2026-10-09T11:39:41.876395Z"),
		SrcAddr:      netip.MustParseAddrPort("10.244.0.14:58564"),
		SrcWorkload:  "shuttle-7b5db664c-hmlqb",
		SrcNamespace: "starfleet",
		SrcIdentity:  "spiffe://cluster.local/ns/starfleet/sa/shuttle",
		DstAddr:      netip.MustParseAddrPort("10.244.0.8:15008"),
		DstHBONEAddr: "10.244.0.8:9080",
		DstService:   "cargo.starfleet.svc.cluster.local",
		DstWorkload:  "cargo-v1-6f787f8bd5-h2bpn",
		DstNamespace: "starfleet",
		DstIdentity:  "spiffe://cluster.local/ns/starfleet/sa/starfleet-cargo",
		Direction:    Inbound,
		MTLS:         true,
		Err:          NoAllowMatched(),
	}
	const istio = "2026-10-09T11:39:41.876395Z\terror\taccess\tconnection complete\tsrc.addr=10.244.0.14:58564 src.workload=\"shuttle-7b5db664c-hmlqb\" src.namespace=\"starfleet\" src.identity=\"spiffe://cluster.local/ns/starfleet/sa/shuttle\" dst.addr=10.244.0.8:15008 dst.hbone_addr=10.244.0.8:9080 dst.service=\"cargo.starfleet.svc.cluster.local\" dst.workload=\"cargo-v1-6f787f8bd5-h2bpn\" dst.namespace=\"starfleet\" dst.identity=\"spiffe://cluster.local/ns/starfleet/sa/starfleet-cargo\" direction=\"inbound\" bytes_sent=0 bytes_recv=0 duration=\"0ms\" error=\"connection closed due to policy rejection: allow policies exist, but none allowed\"\n"
	if got := logText(nil, func(l *slog.Logger) { e.Log(context.Background(), l) }); got != istio {
		t.Fatalf("got\n%q\nwant\n%q", got, istio)
	}
}

// Plaintext to an inbound port under STRICT mTLS: no identities, and none logged even if known.
func TestPlaintextHasNoIdentities(t *testing.T) {
	e := Entry{
		Time:         at("2025-10-30T22:23:01.119792Z"),
		SrcAddr:      netip.MustParseAddrPort("10.217.0.2:44480"),
		SrcIdentity:  "spiffe://cluster.local/ns/x/sa/not-authenticated",
		DstAddr:      netip.MustParseAddrPort("10.217.0.248:8080"),
		DstWorkload:  "golang-ex-6d957754b-nfbfv",
		DstNamespace: "test",
		DstIdentity:  "spiffe://cluster.local/ns/test/sa/golang-ex",
		Direction:    Inbound,
		Err:          DeniedBy("istio-system/istio_converted_static_strict"),
	}
	got := logText(nil, func(l *slog.Logger) { e.Log(context.Background(), l) })
	want := "2025-10-30T22:23:01.119792Z\terror\taccess\tconnection complete\t" +
		`src.addr=10.217.0.2:44480 dst.addr=10.217.0.248:8080 dst.workload="golang-ex-6d957754b-nfbfv" dst.namespace="test" direction="inbound" bytes_sent=0 bytes_recv=0 duration="0ms" error="connection closed due to policy rejection: explicitly denied by: istio-system/istio_converted_static_strict"` + "\n"
	if got != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
}

// The source's ztunnel when the destination answered the CONNECT with 401.
func TestOutboundUnauthorized(t *testing.T) {
	e := bookinfoOutbound()
	e.BytesSent, e.BytesRecv, e.Duration = 0, 0, 0
	e.Err = &HTTPStatusError{Code: 401}
	got := logText(nil, func(l *slog.Logger) { e.Log(context.Background(), l) })
	if !strings.HasPrefix(got, "2024-05-04T09:59:05.028771Z\terror\taccess\tconnection complete\tsrc.addr=") ||
		!strings.HasSuffix(got, ` direction="outbound" bytes_sent=0 bytes_recv=0 duration="0ms" error="http status: 401 Unauthorized"`+"\n") {
		t.Fatalf("got %q", got)
	}
}

func TestEarlyDeny(t *testing.T) {
	e := Entry{
		Time:        at("2024-08-20T12:00:00.5Z"),
		SrcAddr:     netip.MustParseAddrPort("10.244.0.5:51000"),
		SrcWorkload: "ignored-by-early-deny",
		DstAddr:     netip.MustParseAddrPort("10.100.97.189:8200"),
		Direction:   Outbound,
		Err:         NoHealthyUpstream(netip.MustParseAddrPort("10.100.97.189:8200")),
	}
	got := logText(nil, func(l *slog.Logger) { e.LogFailed(context.Background(), l) })
	want := "2024-08-20T12:00:00.500000Z\twarn\taccess\tconnection failed\t" +
		`src.addr=10.244.0.5:51000 dst.addr=10.100.97.189:8200 direction="outbound" error="no healthy upstream: 10.100.97.189:8200"` + "\n"
	if got != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
}

func TestOpenedOnlyAtDebug(t *testing.T) {
	e := bookinfoOutbound()
	if got := logText(nil, func(l *slog.Logger) { e.LogOpened(context.Background(), l) }); got != "" {
		t.Errorf("connection opened logged at the default level: %q", got)
	}
	got := logText(&HandlerOptions{Level: slog.LevelDebug}, func(l *slog.Logger) { e.LogOpened(context.Background(), l) })
	want := "2024-05-04T09:59:05.028771Z\tdebug\taccess\tconnection opened\t" +
		`src.addr=10.244.1.12:58508 src.workload="sleep-7656cf8794-r7zb9" src.namespace="default" src.identity="spiffe://cluster.local/ns/default/sa/sleep" ` +
		`dst.addr=10.244.1.10:15008 dst.hbone_addr=10.244.1.10:9080 dst.service="productpage.default.svc.cluster.local" dst.workload="productpage-v1-87d54dd59-fn6vw" dst.namespace="productpage" dst.identity="spiffe://cluster.local/ns/default/sa/bookinfo-productpage" ` +
		`direction="outbound"` + "\n"
	if got != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
}

func TestJSON(t *testing.T) {
	e := bookinfoOutbound()
	e.Err = &HTTPStatusError{Code: 503}
	got := logText(&HandlerOptions{Format: JSON}, func(l *slog.Logger) { e.Log(context.Background(), l) })
	want := `{"level":"error","time":"2024-05-04T09:59:05.028771Z","scope":"access","message":"connection complete",` +
		`"src.addr":"10.244.1.12:58508","src.workload":"sleep-7656cf8794-r7zb9","src.namespace":"default","src.identity":"spiffe://cluster.local/ns/default/sa/sleep",` +
		`"dst.addr":"10.244.1.10:15008","dst.hbone_addr":"10.244.1.10:9080","dst.service":"productpage.default.svc.cluster.local","dst.workload":"productpage-v1-87d54dd59-fn6vw","dst.namespace":"productpage","dst.identity":"spiffe://cluster.local/ns/default/sa/bookinfo-productpage",` +
		`"direction":"outbound","bytes_sent":80,"bytes_recv":175,"duration":"1ms","error":"http status: 503 Service Unavailable"}` + "\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(got), &m); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
}

// TestStdlibJSONHandler: the fields are plain slog attributes, so slog's own JSON handler writes
// the same keys and values (with its own names for time, level and message).
func TestStdlibJSONHandler(t *testing.T) {
	e := bookinfoOutbound()
	e.Err = NoAllowMatched()
	var std, ours bytes.Buffer
	e.Log(context.Background(), slog.New(slog.NewJSONHandler(&std, nil)))
	e.Log(context.Background(), slog.New(NewHandler(&ours, &HandlerOptions{Format: JSON})))

	var a, b map[string]any
	if err := json.Unmarshal(std.Bytes(), &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(ours.Bytes(), &b); err != nil {
		t.Fatal(err)
	}
	if a["msg"] != b["message"] || a["level"] != "ERROR" || b["level"] != "error" {
		t.Errorf("message/level: slog %v %v, ours %v %v", a["msg"], a["level"], b["message"], b["level"])
	}
	for _, k := range []string{"time", "level", "msg", "message"} {
		delete(a, k)
		delete(b, k)
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if !bytes.Equal(ja, jb) {
		t.Errorf("fields differ:\nslog %s\nours %s", ja, jb)
	}
}

func TestHandlerScopeAndGroups(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(NewHandler(&buf, &HandlerOptions{}))
	when := at("2026-01-02T03:04:05Z")
	emit := func(l *slog.Logger, msg string, attrs ...slog.Attr) {
		r := slog.NewRecord(when, slog.LevelInfo, msg, 0)
		r.AddAttrs(attrs...)
		l.Handler().Handle(context.Background(), r)
	}

	emit(base, "no scope")
	zt := base.With(ScopeKey, "ztunnel")
	emit(zt, "listener established", slog.String("address", "127.0.0.1:15080"), slog.Bool("transparent", false))
	// An access line through a component logger: the record's scope wins, and appears once.
	e := Entry{Time: when, SrcAddr: netip.MustParseAddrPort("127.0.0.1:1"), Direction: Outbound}
	e.LogFailed(context.Background(), zt)
	emit(zt.WithGroup("src"), "grouped", slog.String("workload", "w"), slog.Group("x", slog.Int("n", 1)))

	want := "2026-01-02T03:04:05.000000Z\tinfo\tdefault\tno scope\n" +
		"2026-01-02T03:04:05.000000Z\tinfo\tztunnel\tlistener established\taddress=\"127.0.0.1:15080\" transparent=false\n" +
		"2026-01-02T03:04:05.000000Z\twarn\taccess\tconnection failed\tsrc.addr=127.0.0.1:1 direction=\"outbound\"\n" +
		"2026-01-02T03:04:05.000000Z\tinfo\tztunnel\tgrouped\tsrc.workload=\"w\" src.x.n=1\n"
	if got := buf.String(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestHandlerConcurrentLines(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(NewHandler(&buf, &HandlerOptions{Format: JSON}))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				e := bookinfoOutbound()
				e.BytesSent = int64(i)
				e.Log(context.Background(), l)
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 400 {
		t.Fatalf("%d lines, want 400", len(lines))
	}
	for _, line := range lines {
		if !json.Valid([]byte(line)) {
			t.Fatalf("interleaved or invalid line: %q", line)
		}
	}
}

func TestErrorWording(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{DeniedBy("ns/name"), "connection closed due to policy rejection: explicitly denied by: ns/name"},
		{NoAllowMatched(), "connection closed due to policy rejection: allow policies exist, but none allowed"},
		{&PolicyError{Reason: "allow policies exist, but none allowed"}, "connection closed due to policy rejection: allow policies exist, but none allowed"},
		{&HTTPStatusError{Code: 401}, "http status: 401 Unauthorized"},
		{&HTTPStatusError{Code: 503}, "http status: 503 Service Unavailable"},
		{NoHealthyUpstream(netip.MustParseAddrPort("10.100.97.189:8200")), "no healthy upstream: 10.100.97.189:8200"},
		{ConnectTimeout(), "connection timed out, maybe a NetworkPolicy is blocking HBONE port 15008: deadline has elapsed"},
		{ErrIPMismatch, "ip mismatch"},
		{ErrUnknownWaypoint, "unknown waypoint"},
		{ErrSelfCall, "attempted recursive call to ourselves"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("%q, want %q", got, tc.want)
		}
	}
}

func TestQuotingAndEscaping(t *testing.T) {
	e := Entry{Time: at("2026-01-01T00:00:00Z"), SrcWorkload: "a \"b\"\n<c>", Direction: Inbound, Err: errors.New("x\ty")}
	text := logText(nil, func(l *slog.Logger) { e.Log(context.Background(), l) })
	if !strings.Contains(text, `src.workload="a \"b\"\n<c>"`) || !strings.Contains(text, `error="x\ty"`) {
		t.Errorf("text: %q", text)
	}
	js := logText(&HandlerOptions{Format: JSON}, func(l *slog.Logger) { e.Log(context.Background(), l) })
	var m map[string]any
	if err := json.Unmarshal([]byte(js), &m); err != nil || m["src.workload"] != "a \"b\"\n<c>" || m["error"] != "x\ty" {
		t.Errorf("json %q: %v %v", js, m, err)
	}
}
