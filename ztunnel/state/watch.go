package state

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"time"
)

// Watch polls a state file (every 500 ms, or WithPollInterval) until ctx ends. The first read
// and every change of content (compared by SHA-256) is parsed; a good file is passed to
// onUpdate, a bad or unreadable one is logged with what is wrong and skipped, so that the last
// good State keeps serving. onUpdate runs on Watch's goroutine. Write the file atomically
// (write a temporary file, rename it) so a half-written file is never seen.
func Watch(ctx context.Context, path string, logger *slog.Logger, onUpdate func(*State), opts ...Option) {
	o := buildOptions(opts)
	w := watcher{path: path, logger: logger, onUpdate: onUpdate, opts: opts}
	t := time.NewTicker(o.poll)
	defer t.Stop()
	for {
		w.poll()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

type watcher struct {
	path     string
	logger   *slog.Logger
	onUpdate func(*State)
	opts     []Option
	seen     bool
	sum      [sha256.Size]byte
	readErr  string
}

func (w *watcher) poll() {
	data, err := os.ReadFile(w.path)
	if err != nil {
		if err.Error() != w.readErr { // once per distinct problem, not every poll
			w.readErr = err.Error()
			w.logger.Error("cannot read the state file; keeping the last good state", "file", w.path, "error", err)
		}
		return
	}
	w.readErr = ""
	sum := sha256.Sum256(data)
	if w.seen && sum == w.sum {
		return
	}
	w.seen, w.sum = true, sum
	s, err := Parse(data, w.path, w.opts...)
	if err != nil {
		w.logger.Error("bad state file; keeping the last good state", "file", w.path, "error", err)
		return
	}
	r := s.Resources()
	w.logger.Info("state file loaded", "file", w.path, "workloads", len(r.Workloads), "services", len(r.Services), "authorizations", len(r.Authorizations))
	w.onUpdate(s)
}
