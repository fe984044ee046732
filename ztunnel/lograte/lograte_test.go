package lograte

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the summary's timer goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Split(strings.TrimSpace(s.b.String()), "\n")
}

// A burst over the budget: the budget's lines pass, the rest are counted, and the count comes
// out on a line of its own when nothing follows (or on the next line that passes).
func TestBudgetAndSummary(t *testing.T) {
	var out syncBuffer
	log := slog.New(NewHandler(slog.NewTextHandler(&out, nil), 3)).With("scope", "hbone")
	for i := range 100 {
		log.Warn("connection failed", "i", i)
	}
	got := out.lines()
	if len(got) != 3 {
		t.Fatalf("%d lines passed, want the 3 of the budget:\n%s", len(got), strings.Join(got, "\n"))
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(out.lines()) < 4 {
		if time.Now().After(deadline) {
			t.Fatal("no summary line")
		}
		time.Sleep(20 * time.Millisecond) // polling, not synchronisation
	}
	summary := out.lines()[3]
	for _, want := range []string{"level=WARN", `msg="` + SummaryMsg + `"`, `msg.suppressed="connection failed"`, "suppressed=97", "scope=hbone"} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary %q lacks %q", summary, want)
		}
	}
	// The budget refills: after a second, lines pass again.
	time.Sleep(1100 * time.Millisecond) // the refill is what is tested
	log.Warn("connection failed", "i", 100)
	if last := out.lines()[len(out.lines())-1]; !strings.Contains(last, "i=100") {
		t.Errorf("line after the refill %q", last)
	}
}

// The count of dropped lines rides on the next line that passes.
func TestSuppressedOnNextLine(t *testing.T) {
	var out syncBuffer
	h := NewHandler(slog.NewTextHandler(&out, nil), 1)
	log := slog.New(h)
	log.Warn("passed first") // the one token
	log.Warn("dropped")
	hh := h.(*handler)
	hh.b.mu.Lock()
	hh.b.tokens = 1 // as a second later
	hh.b.mu.Unlock()
	log.Warn("passed")
	got := out.lines()
	if len(got) != 2 || !strings.Contains(got[1], "msg=passed") || !strings.Contains(got[1], "suppressed=1") {
		t.Errorf("lines %q, want the second carrying suppressed=1", got)
	}
}

func TestNoLimit(t *testing.T) {
	base := slog.NewTextHandler(&bytes.Buffer{}, nil)
	if NewHandler(base, 0) != slog.Handler(base) || NewHandler(base, -1) != slog.Handler(base) {
		t.Error("a rate ≤ 0 should pass the handler through")
	}
}
