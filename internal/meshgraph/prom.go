package meshgraph

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/goambient/goambient/internal/promtext"
)

// Row is one element of an instant vector.
type Row struct {
	Labels map[string]string
	Value  float64
}

// maxAnswer bounds what is read of one Prometheus answer.
const maxAnswer = 32 << 20

// Instant runs an instant query against Prometheus's HTTP API at base (http://host:port) at t.
func Instant(ctx context.Context, c *http.Client, base, promql string, t time.Time) ([]Row, error) {
	u := base + "/api/v1/query?" + url.Values{"query": {promql}, "time": {strconv.FormatInt(t.Unix(), 10)}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var ans struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(&ans); err != nil {
		return nil, fmt.Errorf("prometheus: %s: %w", resp.Status, err)
	}
	if ans.Status != "success" {
		return nil, fmt.Errorf("prometheus: %s: %s", resp.Status, ans.Error)
	}
	if ans.Data.ResultType != "vector" {
		return nil, fmt.Errorf("prometheus: result type %q, want vector", ans.Data.ResultType)
	}
	rows := make([]Row, 0, len(ans.Data.Result))
	for _, r := range ans.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("prometheus: value %v: %w", r.Value[1], err)
		}
		rows = append(rows, Row{Labels: r.Metric, Value: v})
	}
	return rows, nil
}

// QueryResult is one of Kiali's queries and what it returned.
type QueryResult struct {
	Query
	Rows []Row
}

// FromPrometheus runs Kiali's graph queries for each namespace at t over window and builds
// the graph (Unit "per second"); it returns the queries' results too.
func FromPrometheus(ctx context.Context, c *http.Client, base string, namespaces []string, window time.Duration, t time.Time) (*Graph, []QueryResult, error) {
	g := New("per second")
	var results []QueryResult
	var security []Row
	for _, ns := range namespaces {
		for i, q := range KialiQueries(ns, window) {
			rows, err := Instant(ctx, c, base, q.PromQL, t)
			if err != nil {
				return nil, nil, fmt.Errorf("%s query %q: %w", q.Kind, q.PromQL, err)
			}
			results = append(results, QueryResult{Query: q, Rows: rows})
			for _, r := range rows {
				switch q.Kind {
				case "security":
					security = append(security, r)
				default:
					g.Add(fmt.Sprintf("%s/%d", ns, i), withProtocol(q.Kind, r.Labels), r.Value)
				}
			}
		}
	}
	for _, r := range security {
		g.AddSecurity(r.Labels)
	}
	return g.Finish(), results, nil
}

func withProtocol(kind string, l map[string]string) map[string]string {
	if kind == "tcp" {
		return withoutProtocol(l)
	}
	return l
}

// FromEndpoints reads each metrics URL (a component's /stats/prometheus) and builds the graph
// from the counters (FromSamples).
func FromEndpoints(ctx context.Context, c *http.Client, urls []string) (*Graph, error) {
	var all []promtext.Sample
	for _, u := range urls {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		s, err := promtext.Parse(io.LimitReader(resp.Body, maxAnswer))
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", u, err)
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s: %s", u, resp.Status)
		}
		all = append(all, s...)
	}
	return FromSamples(all), nil
}
