package state

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// logCapture is a slog.Handler that hands every record to a channel.
type logCapture chan slog.Record

func (c logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (c logCapture) Handle(_ context.Context, r slog.Record) error {
	select {
	case c <- r.Clone():
	default: // a test that does not read its logs must not block the watcher
	}
	return nil
}
func (c logCapture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c logCapture) WithGroup(string) slog.Handler      { return c }

func attr(r slog.Record, key string) string {
	var v string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value.String()
			return false
		}
		return true
	})
	return v
}

// waitFor returns the next value from ch, failing the test after a deadline.
func waitFor[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// waitLog waits for a log record whose message contains msg.
func waitLog(t *testing.T, logs logCapture, msg string) slog.Record {
	t.Helper()
	for {
		r := waitFor(t, logs, "log "+msg)
		if strings.Contains(r.Message, msg) {
			return r
		}
	}
}

// writeAtomic replaces path's content as a careful writer does (temporary file, rename).
func writeAtomic(t *testing.T, path, from string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestWatch: the watcher loads the file, keeps the last good state through a bad file and a
// missing file (logging what is wrong), picks up the next good content, and stops with ctx.
func TestWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.yaml")
	writeAtomic(t, path, "testdata/handson.yaml")
	logs := make(logCapture, 64)
	store := NewStore(nil)
	updates := make(chan *State, 8)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, path, slog.New(logs), func(s *State) { store.Store(s); updates <- s }, WithPollInterval(time.Millisecond))
	}()
	defer func() { cancel(); <-done }()

	first := waitFor(t, updates, "the first load")
	if store.Load() != first || first.WorkloadByIP(ip("10.244.2.5")).GetName() != "handson-blue" {
		t.Fatal("first state not stored")
	}
	if r := waitLog(t, logs, "state file loaded"); attr(r, "workloads") != "4" || attr(r, "authorizations") != "1" {
		t.Errorf("load log: %v", r)
	}

	writeAtomic(t, path, "testdata/bad/unknown-field.yaml")
	r := waitLog(t, logs, "bad state file; keeping the last good state")
	if r.Level != slog.LevelError || !strings.Contains(attr(r, "error"), `workloads[1].waypoint.hostname.hostnme: unknown field "hostnme"`) {
		t.Errorf("bad file log: %s %v", r.Level, attr(r, "error"))
	}
	if store.Load() != first || len(updates) != 0 {
		t.Fatal("a bad file replaced the state")
	}

	writeAtomic(t, path, "testdata/handson-waypoint.yaml")
	second := waitFor(t, updates, "the waypoint state")
	if store.Load() != second || second.ServiceByVIP(ip("10.96.0.10")).GetWaypoint() == nil {
		t.Fatal("second state not stored")
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	r = waitLog(t, logs, "cannot read the state file")
	if !strings.Contains(attr(r, "error"), "no such file") || store.Load() != second {
		t.Errorf("missing file: %v, state kept: %v", attr(r, "error"), store.Load() == second)
	}

	cancel()
	waitFor(t, done, "Watch to return")
}

// TestWatcherPoll: the same content is loaded once, and a lasting read error is logged once.
func TestWatcherPoll(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.yaml")
	writeAtomic(t, path, "testdata/handson.yaml")
	logs := make(logCapture, 64)
	n := 0
	w := watcher{path: path, logger: slog.New(logs), onUpdate: func(*State) { n++ }}
	w.poll()
	w.poll()
	if n != 1 {
		t.Errorf("%d updates for one content", n)
	}
	writeAtomic(t, path, "testdata/bad/bad-ip.yaml")
	w.poll()
	w.poll()
	writeAtomic(t, path, "testdata/handson-waypoint.yaml")
	w.poll()
	if n != 2 {
		t.Errorf("%d updates, want 2", n)
	}
	os.Remove(path)
	w.poll()
	w.poll()
	var errs []string
	for len(logs) > 0 {
		if r := <-logs; r.Level == slog.LevelError {
			errs = append(errs, r.Message)
		}
	}
	if len(errs) != 2 {
		t.Errorf("want one error for the bad file and one for the missing file, got %q", errs)
	}
	writeAtomic(t, path, "testdata/handson.yaml") // back: a new content again
	w.poll()
	if n != 3 {
		t.Errorf("%d updates, want 3", n)
	}
}
