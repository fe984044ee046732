package files

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goambient/goambient/xdsserver/model"
)

// logLines keeps every log record as "message key=value ...".
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l *logLines) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, b.String())
	return nil
}
func (l *logLines) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logLines) WithGroup(string) slog.Handler      { return l }

// count is the number of lines with message msg that contain every one of subs.
func (l *logLines) count(msg string, subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, line := range l.lines {
		if !strings.HasPrefix(line, msg+" ") {
			continue
		}
		for _, s := range subs {
			if !strings.Contains(line, s) {
				continue next
			}
		}
		n++
	}
	return n
}

// hugeBroken is about size bytes of valid manifests whose last document is cut short, as a
// huge file caught while being written.
func hugeBroken(t *testing.T, size int) string {
	one := example(t, "handson/mesh.yaml")
	var b strings.Builder
	for i := 0; b.Len() < size; i++ {
		b.WriteString(strings.ReplaceAll(one, "name: handson", fmt.Sprintf("name: handson-%d", i)))
		b.WriteString("\n---\n")
	}
	b.WriteString("apiVersion: v1\nkind: Pod\nmetadata: {name: [cut\n")
	return b.String()
}

// TestAttackBrokenFileParsedOnce: a 256 KiB broken file is parsed and reported once however
// many polls see it, also while it counts as recently modified (read again, not parsed again);
// a change to it is parsed and reported once more; the good file's objects stay throughout.
func TestAttackBrokenFileParsedOnce(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "mesh.yaml", example(t, "handson/mesh.yaml"))
	write(t, dir, "zz-broken.yaml", hugeBroken(t, 256<<10))
	mtime := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "zz-broken.yaml"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	logs := &logLines{}
	src := New(Options{Paths: []string{dir}, Model: model.DefaultConfig(), Logger: slog.New(logs)})
	m, err := src.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Workloads) != 4 || !strings.Contains(errorsOf(m), "zz-broken.yaml") {
		t.Fatalf("%d workloads, errors:\n%s", len(m.Workloads), errorsOf(m))
	}
	check := func(when string, parses, reports int) {
		t.Helper()
		if n := logs.count("configuration file parsed", "zz-broken.yaml"); n != parses {
			t.Errorf("%s: parsed %d times, want %d", when, n, parses)
		}
		if n := logs.count("configuration file unusable", "zz-broken.yaml"); n != reports {
			t.Errorf("%s: reported %d times, want %d", when, n, reports)
		}
	}
	check("first load", 1, 1)
	for range 50 {
		if src.poll() {
			t.Fatal("nothing changed, yet poll wants a rebuild")
		}
	}
	check("50 polls", 1, 1)

	// Recently modified: read again at each poll, never parsed again.
	mtime = time.Now()
	if err := os.Chtimes(filepath.Join(dir, "zz-broken.yaml"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	src.now = func() time.Time { return mtime.Add(time.Second) }
	for range 20 {
		if src.poll() {
			t.Fatal("same content, yet poll wants a rebuild")
		}
	}
	check("20 polls of a recently modified file", 1, 1)

	// New broken content: parsed and reported once more.
	write(t, dir, "zz-broken.yaml", hugeBroken(t, 256<<10)+"x: [\n")
	src.now = time.Now
	src.poll()
	for range 10 {
		src.poll()
	}
	check("a change", 2, 2)
	m, err = src.build()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Workloads) != 4 {
		t.Errorf("the good file's objects are gone: %d workloads", len(m.Workloads))
	}
}

// TestAttackHugeFileSkipped: a file larger than MaxFileSize is reported once, naming the file
// and the limit, is never parsed, and keeps its previous objects; back under the limit, it is
// read again.
func TestAttackHugeFileSkipped(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "mesh.yaml", example(t, "handson/mesh.yaml"))
	policy := example(t, "handson/L4-authorization-policy.yaml")
	write(t, dir, "policy.yaml", policy)
	logs := &logLines{}
	src := New(Options{Paths: []string{dir}, Model: model.DefaultConfig(), MaxFileSize: 64 << 10, Logger: slog.New(logs)})
	if _, err := src.Load(); err != nil {
		t.Fatal(err)
	}
	huge := policy + "\n# " + strings.Repeat("padding ", 1<<17) + "\n"
	write(t, dir, "policy.yaml", huge)
	if !src.poll() {
		t.Fatal("the file grew past the limit, yet poll wants no rebuild")
	}
	for range 50 {
		if src.poll() {
			t.Fatal("nothing changed, yet poll wants a rebuild")
		}
	}
	m, err := src.build()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Policies.AuthorizationPolicies) != 1 {
		t.Errorf("the oversized file lost its previous objects: %d policies", len(m.Policies.AuthorizationPolicies))
	}
	want := fmt.Sprintf("policy.yaml: %d bytes, more than the 65536 bytes a configuration file may have", len(huge))
	if e := errorsOf(m); !strings.Contains(e, want) || !strings.Contains(e, "its previous objects are kept") {
		t.Errorf("errors:\n%s\nwant %q", e, want)
	}
	if n := logs.count("configuration file unusable", "policy.yaml"); n != 1 {
		t.Errorf("reported %d times, want once", n)
	}
	if n := logs.count("configuration file parsed", "policy.yaml"); n != 1 {
		t.Errorf("parsed %d times, want once (before it grew)", n)
	}
	write(t, dir, "policy.yaml", strings.Replace(policy, "layer4-authz", "layer4-authz-2", 1))
	if !src.poll() {
		t.Fatal("the file is back under the limit, yet poll wants no rebuild")
	}
	if m, _ = src.build(); len(m.Errors) != 0 || m.Policies.AuthorizationPolicies[0].Name != "layer4-authz-2" {
		t.Errorf("errors:\n%s", errorsOf(m))
	}
}
