package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// newRequestID is a random x-request-id.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "meshctl-demo-" + hex.EncodeToString(b[:])
}

// fields is want as `k=v k2=v2`, sorted.
func fields(want map[string]string) string {
	var out []string
	for k, v := range want {
		if v == "" {
			v = "-"
		}
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// accessLogByID reads the waypoint's access log: each line by its request_id.
func accessLogByID(path string) map[string]string {
	out := map[string]string{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(b), "\n") {
		var m struct {
			ID string `json:"request_id"`
		}
		if json.Unmarshal([]byte(l), &m) == nil && m.ID != "" {
			out[m.ID] = l
		}
	}
	return out
}

// waitAccessLog waits until the access log has a line for every id (the waypoint writes it
// as the request ends, just after the response), or logDeadline passes.
func (p *player) waitAccessLog(ctx context.Context, ids []string) (map[string]string, []string) {
	var lines map[string]string
	var missing []string
	p.s.poll(ctx, logDeadline, "access log lines", nil, func() bool {
		lines, missing = accessLogByID(p.s.accessLog), nil
		for _, id := range ids {
			if _, ok := lines[id]; !ok {
				missing = append(missing, id)
			}
		}
		return len(missing) == 0
	})
	return lines, missing
}

// checkAccessLog compares the access-log line of request id with want ("" when it matches).
func (p *player) checkAccessLog(ctx context.Context, id string, want map[string]string) string {
	lines, missing := p.waitAccessLog(ctx, []string{id})
	if len(missing) > 0 {
		return "no waypoint access log line with request_id " + id
	}
	if !accessLogMatch(lines[id], want) {
		return fmt.Sprintf("expected a waypoint access log line with %s, got %s", fields(want), lines[id])
	}
	return ""
}

// binomialBound is the range of counts of n trials of probability q that a correct system
// leaves about once in 150,000 runs: 4.5 standard deviations either side of n·q.
func binomialBound(n int, q float64) (lo, hi float64) {
	mean, sd := float64(n)*q, math.Sqrt(float64(n)*q*(1-q))
	return mean - 4.5*sd, mean + 4.5*sd
}

// sample runs c.Sample ("" when every request got the call's status and the count is within
// the bound).
func (p *player) sample(ctx context.Context, c Call, cmd, socks, from, dial string, hdr [][2]string) string {
	sm := c.Sample
	par := max(sm.Parallel, 1)
	ids := make([]string, sm.N)
	res := make([]Result, sm.N)
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range sm.N {
		ids[i] = newRequestID()
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			res[i] = curl(ctx, socks, from, dial, c.Method, c.URL, c.Data, ids[i], hdr...)
		})
	}
	wg.Wait()
	took := time.Since(start)
	for i, r := range res {
		if r.Status != c.Status {
			return fmt.Sprintf("sample request %d of %d: expected %d, got %s", i+1, sm.N, c.Status, r.String())
		}
	}
	msg := fmt.Sprintf("× %d (%d at a time, %.1fs): all %d", sm.N, par, took.Seconds(), c.Status)
	if sm.Count == nil {
		p.w("      %s\n", msg)
		return ""
	}
	lines, missing := p.waitAccessLog(ctx, ids)
	if len(missing) > 0 {
		return fmt.Sprintf("%d of the sample's requests have no waypoint access log line (first: %s)", len(missing), missing[0])
	}
	counted := 0
	fastest := time.Duration(math.MaxInt64)
	for i, id := range ids {
		if !accessLogMatch(lines[id], sm.Count) {
			continue
		}
		counted++
		fastest = min(fastest, res[i].Took)
		if res[i].Took < sm.AtLeast.Duration {
			return fmt.Sprintf("a request logged with %s took %v, less than %v: %s", fields(sm.Count), res[i].Took, sm.AtLeast, lines[id])
		}
	}
	lo, hi := binomialBound(sm.N, sm.Fraction)
	msg += fmt.Sprintf("; %d with %s (expected %.0f%%: %.0f, within [%.1f, %.1f])", counted, fields(sm.Count), 100*sm.Fraction,
		float64(sm.N)*sm.Fraction, lo, hi)
	if sm.AtLeast.Duration > 0 && counted > 0 {
		msg += fmt.Sprintf("; each took ≥ %v (fastest %.2fs)", sm.AtLeast, fastest.Seconds())
	}
	if float64(counted) < lo || float64(counted) > hi {
		return "sample " + msg + ": outside the binomial bound"
	}
	p.w("      %s\n", msg)
	return ""
}
