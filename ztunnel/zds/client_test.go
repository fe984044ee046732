//go:build unix

package zds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"

	"github.com/goambient/goambient/ztunnel/proxy"
	"github.com/goambient/goambient/ztunnel/zds/zdstest"
)

const wait = 5 * time.Second

// newAgent is a fake node agent on a socket in a temp dir (skips without SOCK_SEQPACKET).
func newAgent(t *testing.T) *zdstest.Agent {
	t.Helper()
	a, err := zdstest.Listen(t, filepath.Join(t.TempDir(), "ztunnel.sock"))
	if err != nil {
		t.Skipf("no SOCK_SEQPACKET unix sockets here: %v", err)
	}
	return a
}

// pipeEnd is the write end of a new pipe as a raw fd for sending, and the read end: once
// every copy of the write end is closed, reading it ends (io.EOF).
func pipeEnd(t *testing.T) (fd int, r *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	fd, err = unix.Dup(int(w.Fd()))
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return fd, r
}

// closedEverywhere reports whether every copy of r's write end is closed (read gets EOF),
// waiting at most wait.
func closedEverywhere(r *os.File) bool {
	r.SetReadDeadline(time.Now().Add(wait))
	b := make([]byte, 64)
	for range 1000 {
		_, err := r.Read(b)
		if err != nil {
			return errors.Is(err, io.EOF)
		}
	}
	return false
}

// fakeNS is a received fd standing for a namespace.
type fakeNS struct{ fd int }

func (f *fakeNS) Listen(context.Context, string, string) (net.Listener, error) {
	return nil, errors.New("fake")
}
func (f *fakeNS) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("fake")
}
func (f *fakeNS) Close() error { return unix.Close(f.fd) }

// fakeHandler records the calls; addErr, when set, is AddPod's answer.
type fakeHandler struct {
	mu      sync.Mutex
	calls   []string
	pods    map[string]*fakeNS
	addErr  error
	done    bool // set as each call returns: the ack must come after it
	changed chan struct{}
}

func newFakeHandler() *fakeHandler {
	return &fakeHandler{pods: map[string]*fakeNS{}, changed: make(chan struct{}, 100)}
}

func (h *fakeHandler) record(s string) {
	h.calls = append(h.calls, s)
	h.done = true
	h.changed <- struct{}{}
}

func (h *fakeHandler) AddPod(_ context.Context, uid, ns, name string, n proxy.Netns) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	defer h.record(fmt.Sprintf("add %s %s/%s", uid, ns, name))
	if h.addErr != nil {
		n.(*fakeNS).Close()
		return h.addErr
	}
	if old := h.pods[uid]; old != nil {
		old.Close()
	}
	h.pods[uid] = n.(*fakeNS)
	return nil
}

func (h *fakeHandler) DelPod(_ context.Context, uid string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p := h.pods[uid]; p != nil {
		p.Close()
		delete(h.pods, uid)
	}
	h.record("del " + uid)
	return nil
}

func (h *fakeHandler) RetainPods(_ context.Context, keep map[string]bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var k []string
	for uid := range keep {
		k = append(k, uid)
	}
	slices.Sort(k)
	for uid, p := range h.pods {
		if !keep[uid] {
			p.Close()
			delete(h.pods, uid)
		}
	}
	h.record("retain " + strings.Join(k, ","))
	return nil
}

// takeDone reports whether a call returned since the last takeDone.
func (h *fakeHandler) takeDone() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.done
	h.done = false
	return d
}

func (h *fakeHandler) callList() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.calls)
}

// start runs the client against a; it stops when the test ends.
func start(t *testing.T, socket string, h Handler) *syncLog {
	t.Helper()
	logs := &syncLog{written: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Socket: socket, Handler: h, Logger: slog.New(slog.NewTextHandler(logs, nil)),
			OpenNetns:  func(fd int, uid string) (proxy.Netns, error) { return &fakeNS{fd: fd}, nil },
			MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
		case <-time.After(wait):
			t.Error("Run did not return after its context ended")
		}
	})
	return logs
}

type syncLog struct {
	mu      sync.Mutex
	b       strings.Builder
	written chan struct{} // a token after each write
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case l.written <- struct{}{}:
	default:
	}
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSnapshotAddDel: hello, a snapshot of one Add and one Keep, SnapshotSent (the handler
// keeps both uids), then an Add and a Del; every request is acked after its handler call
// returned, and the namespace fd arrives (writing to it reaches the agent's pipe).
func TestSnapshotAddDel(t *testing.T) {
	a, h := newAgent(t), newFakeHandler()
	start(t, a.Path, h)
	c := a.Accept()

	fd1, r1 := pipeEnd(t)
	if e := c.Send(zdstest.Add("uid-1", "ns", "a", "sa"), fd1); e != "" {
		t.Fatalf("add uid-1: ack error %q", e)
	}
	unix.Close(fd1) // the node agent keeps its own copy; here only the ztunnel's is left
	if !h.takeDone() {
		t.Fatal("ack before AddPod returned")
	}
	h.mu.Lock()
	got := h.pods["uid-1"]
	h.mu.Unlock()
	if got == nil {
		t.Fatal("AddPod got no namespace")
	}
	if _, err := unix.Write(got.fd, []byte("ns")); err != nil {
		t.Fatalf("write to the received fd: %v", err)
	}
	b := make([]byte, 2)
	r1.SetReadDeadline(time.Now().Add(wait))
	if _, err := io.ReadFull(r1, b); err != nil || string(b) != "ns" {
		t.Fatalf("the received fd is not the sent pipe: %q %v", b, err)
	}
	for _, req := range []*zdsapi.WorkloadRequest{zdstest.Keep("uid-2"), zdstest.SnapshotSent()} {
		if e := c.Send(req); e != "" {
			t.Fatalf("%v: ack error %q", req, e)
		}
		if !h.takeDone() && req == zdstest.SnapshotSent() {
			t.Fatal("snapshot acked before RetainPods returned")
		}
	}
	fd3, _ := pipeEnd(t)
	if e := c.Send(zdstest.Add("uid-3", "ns", "c", "sa"), fd3); e != "" {
		t.Fatalf("add uid-3: %q", e)
	}
	unix.Close(fd3)
	if e := c.Send(zdstest.Del("uid-1")); e != "" {
		t.Fatalf("del uid-1: %q", e)
	}
	if !closedEverywhere(r1) {
		t.Error("uid-1's namespace fd is still open after its Del")
	}
	want := []string{"add uid-1 ns/a", "retain uid-1,uid-2", "add uid-3 ns/c", "del uid-1"}
	if got := h.callList(); !slices.Equal(got, want) {
		t.Errorf("handler calls:\n got %q\nwant %q", got, want)
	}
}

// TestBadRequests: each malformed request is acked with an error naming what is wrong, its
// fds are closed, and the connection keeps serving.
func TestBadRequests(t *testing.T) {
	a, h := newAgent(t), newFakeHandler()
	logs := start(t, a.Path, h)
	c := a.Accept()
	unknown := []byte{0x48, 0x01} // field 9 (not in the oneof), varint 1
	for _, tc := range []struct {
		name    string
		raw     []byte
		req     *zdsapi.WorkloadRequest
		fds     int
		wantErr string
	}{
		{name: "garbage", raw: []byte{0xff, 0xff, 0xff}, fds: 1, wantErr: "do not decode"},
		{name: "no payload", raw: unknown, wantErr: "no known payload"},
		{name: "add without uid", req: zdstest.Add("", "ns", "a", "sa"), fds: 1, wantErr: "WorkloadRequest.add.uid is empty"},
		{name: "add without name", req: zdstest.Add("uid-x", "ns", "", "sa"), fds: 1, wantErr: "workload_info.name and workload_info.namespace are required"},
		{name: "add without fd", req: zdstest.Add("uid-x", "ns", "a", "sa"), wantErr: "want the pod's network namespace as 1 fd, got 0"},
		{name: "add with two fds", req: zdstest.Add("uid-x", "ns", "a", "sa"), fds: 2, wantErr: "got 2"},
		{name: "del without uid", req: zdstest.Del(""), wantErr: "WorkloadRequest.del.uid is empty"},
		{name: "keep without uid", req: zdstest.Keep(""), fds: 1, wantErr: "WorkloadRequest.keep.uid is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fds []int
			var readers []*os.File
			for range tc.fds {
				fd, r := pipeEnd(t)
				fds, readers = append(fds, fd), append(readers, r)
			}
			b := tc.raw
			if tc.req != nil {
				b, _ = proto.Marshal(tc.req)
			}
			e := c.For(t).SendRaw(b, fds...)
			if !strings.Contains(e, tc.wantErr) {
				t.Errorf("ack error %q, want it to contain %q", e, tc.wantErr)
			}
			for _, fd := range fds {
				unix.Close(fd)
			}
			for i, r := range readers {
				if !closedEverywhere(r) {
					t.Errorf("fd %d sent with the request is still open in the ztunnel", i)
				}
			}
		})
	}
	// Still serving: a good request after the bad ones.
	if e := c.Send(zdstest.SnapshotSent()); e != "" {
		t.Fatalf("snapshot after bad requests: %q", e)
	}
	if e := c.Send(zdstest.Keep("late")); !strings.Contains(e, "only valid before snapshot_sent") {
		t.Errorf("keep after the snapshot: ack %q", e)
	}
	if e := c.Send(zdstest.SnapshotSent()); !strings.Contains(e, "received twice") {
		t.Errorf("second snapshot: ack %q", e)
	}
	if got := h.callList(); !slices.Equal(got, []string{"retain "}) {
		t.Errorf("handler calls: %q, want only the snapshot's", got)
	}
	if !strings.Contains(logs.String(), "do not decode") {
		t.Errorf("no log of the bad request:\n%s", logs)
	}
}

// TestAddError: the handler's error goes back in the ack, cut to fit the node agent's 1 KiB
// read buffer when it is long.
func TestAddError(t *testing.T) {
	a, h := newAgent(t), newFakeHandler()
	start(t, a.Path, h)
	c := a.Accept()
	for _, tc := range []struct {
		err  string
		want string
	}{
		{"listen 10.1.1.2:15008 in the pod's namespace: address in use", "listen 10.1.1.2:15008 in the pod's namespace: address in use"},
		{strings.Repeat("é", 1000), strings.Repeat("é", maxAckError/2) + "..."},
	} {
		h.mu.Lock()
		h.addErr = errors.New(tc.err)
		h.mu.Unlock()
		fd, r := pipeEnd(t)
		e := c.Send(zdstest.Add("uid-1", "ns", "a", "sa"), fd) // read into 1 KiB, as the node agent does
		unix.Close(fd)
		if e != tc.want {
			t.Errorf("ack error %q, want %q", e, tc.want)
		}
		if !closedEverywhere(r) {
			t.Error("the refused pod's fd is still open")
		}
	}
}

// TestReconnect: when the node agent goes away the client connects again, says hello, and the
// new snapshot replaces the pod set (pods not sent again are dropped).
func TestReconnect(t *testing.T) {
	a, h := newAgent(t), newFakeHandler()
	start(t, a.Path, h)
	c := a.Accept()
	for _, uid := range []string{"uid-1", "uid-2"} {
		fd, _ := pipeEnd(t)
		if e := c.Send(zdstest.Add(uid, "ns", uid, "sa"), fd); e != "" {
			t.Fatal(e)
		}
		unix.Close(fd)
	}
	if e := c.Send(zdstest.SnapshotSent()); e != "" {
		t.Fatal(e)
	}
	c.Close() // the node agent restarts

	c2 := a.Accept()
	fd, _ := pipeEnd(t)
	if e := c2.Send(zdstest.Add("uid-2", "ns", "uid-2", "sa"), fd); e != "" {
		t.Fatal(e)
	}
	unix.Close(fd)
	if e := c2.Send(zdstest.SnapshotSent()); e != "" {
		t.Fatal(e)
	}
	want := []string{"add uid-1 ns/uid-1", "add uid-2 ns/uid-2", "retain uid-1,uid-2", "add uid-2 ns/uid-2", "retain uid-2"}
	if got := h.callList(); !slices.Equal(got, want) {
		t.Errorf("handler calls:\n got %q\nwant %q", got, want)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.pods) != 1 || h.pods["uid-2"] == nil {
		t.Errorf("pods after the second snapshot: %v", h.pods)
	}
}

// TestBackoffBeforeAgent: the client keeps trying while the node agent is not there yet.
func TestBackoffBeforeAgent(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "ztunnel.sock")
	logs := start(t, socket, newFakeHandler())
	timeout := time.After(wait)
	for strings.Count(logs.String(), "reconnecting") < 2 {
		select {
		case <-logs.written:
		case <-timeout:
			t.Fatalf("no retries logged:\n%s", logs)
		}
	}
	a, err := zdstest.Listen(t, socket)
	if err != nil {
		t.Skipf("no SOCK_SEQPACKET: %v", err)
	}
	a.Accept() // the client connects and says hello once the agent listens
}
