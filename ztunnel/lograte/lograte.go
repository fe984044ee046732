// Package lograte keeps log lines that a remote peer can trigger at will (failed handshakes,
// streams reset before their answer) to a few per second, with a count of those it dropped.
package lograte

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// SummaryMsg is the message of the line that reports dropped lines.
const SummaryMsg = "log lines suppressed"

// NewHandler returns a slog.Handler that passes records to h at up to perSecond a second
// (a token bucket holding one second's worth, at least 1). Records over the budget are dropped
// and counted: the next record passed carries "suppressed"=N, and when none comes within a
// second, a line "log lines suppressed" (at the level of the last dropped record, with its
// message as "msg.suppressed" and the count) is written by itself. Handlers derived with
// WithAttrs and WithGroup share the budget. perSecond ≤ 0 passes everything.
func NewHandler(h slog.Handler, perSecond float64) slog.Handler {
	if perSecond <= 0 {
		return h
	}
	return &handler{h: h, b: &bucket{rate: perSecond, burst: max(perSecond, 1), tokens: max(perSecond, 1), last: time.Now()}}
}

type handler struct {
	h slog.Handler
	b *bucket
}

// bucket is the budget shared by a handler and those derived from it.
type bucket struct {
	mu          sync.Mutex
	rate, burst float64
	tokens      float64
	last        time.Time
	dropped     int64
	lastDropped slog.Record  // the last record dropped (its message and level go in the summary)
	lastH       slog.Handler // the handler it was for
	timer       *time.Timer  // writes the summary when nothing is passed for a second
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	b := h.b
	b.mu.Lock()
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		b.dropped++
		b.lastDropped, b.lastH = r.Clone(), h.h
		if b.timer == nil {
			b.timer = time.AfterFunc(time.Second, b.summary)
		}
		b.mu.Unlock()
		return nil
	}
	b.tokens--
	n := b.dropped
	b.dropped = 0
	b.mu.Unlock()
	if n > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int64("suppressed", n))
	}
	return h.h.Handle(ctx, r)
}

// summary writes the count of the lines dropped since the last line passed, if any.
func (b *bucket) summary() {
	b.mu.Lock()
	b.timer = nil
	n, last, h := b.dropped, b.lastDropped, b.lastH
	b.dropped, b.lastDropped, b.lastH = 0, slog.Record{}, nil
	b.mu.Unlock()
	if n == 0 || h == nil {
		return
	}
	r := slog.NewRecord(time.Now(), last.Level, SummaryMsg, 0)
	r.AddAttrs(slog.String("msg.suppressed", last.Message), slog.Int64("suppressed", n))
	_ = h.Handle(context.Background(), r)
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &handler{h: h.h.WithAttrs(as), b: h.b}
}

func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{h: h.h.WithGroup(name), b: h.b}
}
