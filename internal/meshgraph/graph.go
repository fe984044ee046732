// Package meshgraph builds the mesh's traffic graph — workloads and services, edges with request rate, error rate and mTLS — from Kiali's Prometheus queries or straight from the components' metrics, and writes it as a table or an HTML page.
package meshgraph

import (
	"sort"
	"strings"

	"github.com/goambient/goambient/internal/promtext"
)

// Node is a workload or a service.
type Node struct {
	ID        string `json:"id"`
	Kind      string `json:"kind"` // "workload", "service" or "unknown"
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// Edge is traffic from one node to another over one protocol.
type Edge struct {
	Source   string             `json:"source"`
	Dest     string             `json:"dest"`
	Protocol string             `json:"protocol"` // http, grpc, tcp
	Rate     float64            `json:"rate"`     // requests (http, grpc) or request bytes (tcp)
	Errors   float64            `json:"errors"`   // requests answered 4xx or 5xx (http, grpc)
	Codes    map[string]float64 `json:"codes"`    // by response_code (http, grpc)
	MTLS     bool               `json:"mtls"`     // every report of it says mutual_tls
	mtlsSeen bool
	byQuery  map[string]float64 // the largest report per response code and query, for Rate
}

// Graph is the nodes and edges; Unit says what Rate counts ("per second" from Prometheus
// rates, "total" from counters read directly).
type Graph struct {
	Unit  string           `json:"unit"`
	Nodes map[string]*Node `json:"nodes"`
	Edges []*Edge          `json:"edges"`
	edges map[string]*Edge
}

// New returns an empty graph.
func New(unit string) *Graph {
	return &Graph{Unit: unit, Nodes: map[string]*Node{}, edges: map[string]*Edge{}}
}

func (g *Graph) node(kind, ns, name string) string {
	if name == "" || name == "unknown" {
		kind, ns, name = "unknown", "", "unknown"
	}
	id := kind + ":" + ns + "/" + name
	if g.Nodes[id] == nil {
		g.Nodes[id] = &Node{ID: id, Kind: kind, Namespace: ns, Name: name}
	}
	return id
}

func (g *Graph) edge(src, dst, proto string) *Edge {
	k := src + ">" + dst + ">" + proto
	e := g.edges[k]
	if e == nil {
		e = &Edge{Source: src, Dest: dst, Protocol: proto, Codes: map[string]float64{}, byQuery: map[string]float64{}}
		g.edges[k] = e
		g.Edges = append(g.Edges, e)
	}
	return e
}

// Add records one result row of a query (source names the query, so that the same traffic
// reported by several reporters or queries counts once): proto is "tcp" for istio_tcp_* rows,
// else the row's request_protocol.
func (g *Graph) Add(source string, l map[string]string, v float64) {
	if v <= 0 {
		return
	}
	proto := l["request_protocol"]
	if proto == "" || proto == "unknown" {
		proto = "tcp"
	}
	src := g.node("workload", l["source_workload_namespace"], l["source_workload"])
	var hops [][2]string
	dst := src
	if s := l["destination_service"]; s != "" && s != "unknown" {
		name, ns := l["destination_service_name"], l["destination_service_namespace"]
		if name == "" || name == "unknown" {
			name = s
		}
		svc := g.node("service", ns, name)
		hops = append(hops, [2]string{src, svc})
		dst = svc
	}
	if w := l["destination_workload"]; w != "" && w != "unknown" {
		hops = append(hops, [2]string{dst, g.node("workload", l["destination_workload_namespace"], w)})
	}
	if len(hops) == 0 {
		hops = append(hops, [2]string{src, g.node("unknown", "", "")})
	}
	code := l["response_code"]
	for _, h := range hops {
		e := g.edge(h[0], h[1], proto)
		k := source + "|" + code
		if v > e.byQuery[k] {
			e.byQuery[k] = v
		}
		if p := l["connection_security_policy"]; p != "" {
			e.markMTLS(p == "mutual_tls")
		}
	}
}

func (e *Edge) markMTLS(ok bool) {
	if !e.mtlsSeen {
		e.MTLS, e.mtlsSeen = ok, true
		return
	}
	e.MTLS = e.MTLS && ok
}

// AddSecurity records a row of Kiali's security-policy query: the edges from its source
// workload to its destination (service, workload) get its connection_security_policy.
func (g *Graph) AddSecurity(l map[string]string) {
	src := g.node("workload", l["source_workload_namespace"], l["source_workload"])
	ok := l["connection_security_policy"] == "mutual_tls"
	for _, e := range g.Edges {
		if e.Source != src {
			continue
		}
		d := g.Nodes[e.Dest]
		if (d.Kind == "service" && d.Name == l["destination_service_name"] && d.Namespace == l["destination_service_namespace"]) ||
			(d.Kind == "workload" && d.Name == l["destination_workload"] && d.Namespace == l["destination_workload_namespace"]) {
			e.markMTLS(ok)
		}
	}
	// The service → workload hop of the same traffic.
	for _, e := range g.Edges {
		s, d := g.Nodes[e.Source], g.Nodes[e.Dest]
		if s.Kind == "service" && s.Name == l["destination_service_name"] && d.Name == l["destination_workload"] {
			e.markMTLS(ok)
		}
	}
}

// Finish computes each edge's rate, errors and codes from what was added, and sorts.
func (g *Graph) Finish() *Graph {
	for _, e := range g.Edges {
		byCode := map[string]float64{}
		for k, v := range e.byQuery {
			_, code, _ := strings.Cut(k, "|")
			if v > byCode[code] {
				byCode[code] = v
			}
		}
		e.Rate, e.Errors = 0, 0
		for code, v := range byCode {
			e.Rate += v
			if code != "" && e.Protocol != "tcp" {
				e.Codes[code] = v
				if code[0] == '4' || code[0] == '5' {
					e.Errors += v
				}
			}
		}
	}
	sort.Slice(g.Edges, func(i, j int) bool {
		a, b := g.Edges[i], g.Edges[j]
		if a.Source != b.Source {
			return a.Source < b.Source
		}
		if a.Dest != b.Dest {
			return a.Dest < b.Dest
		}
		return a.Protocol < b.Protocol
	})
	return g
}

// FromSamples builds the graph from the components' own metrics (no Prometheus): counters,
// so Unit is "total". istio_requests_total and istio_tcp_received_bytes_total (the request
// bytes: istio/istio#32399) from every reporter; each reporter's view counts once.
func FromSamples(samples []promtext.Sample) *Graph {
	g := New("total")
	for _, s := range samples {
		switch s.Name {
		case "istio_requests_total", "istio_tcp_received_bytes_total":
		default:
			continue
		}
		l := s.Labels
		if s.Name != "istio_requests_total" {
			l = withoutProtocol(l)
		}
		g.Add(s.Name+":"+l["reporter"], l, s.Value)
	}
	return g.Finish()
}

func withoutProtocol(l map[string]string) map[string]string {
	c := make(map[string]string, len(l))
	for k, v := range l {
		if k != "request_protocol" {
			c[k] = v
		}
	}
	return c
}
