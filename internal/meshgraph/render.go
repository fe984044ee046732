package meshgraph

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// label is a node's display name.
func (g *Graph) label(id string) string {
	n := g.Nodes[id]
	if n == nil || n.Kind == "unknown" {
		return "unknown"
	}
	if n.Kind == "service" {
		return "svc " + n.Namespace + "/" + n.Name
	}
	return n.Namespace + "/" + n.Name
}

func (g *Graph) rateText(e *Edge) string {
	unit := map[bool]string{true: "B", false: "req"}[e.Protocol == "tcp"]
	if g.Unit == "per second" {
		return fmt.Sprintf("%.3g %s/s", e.Rate, unit)
	}
	return fmt.Sprintf("%g %s", e.Rate, unit)
}

func errText(e *Edge) string {
	if e.Protocol == "tcp" || e.Rate == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*e.Errors/e.Rate)
}

func codesText(e *Edge) string {
	codes := make([]string, 0, len(e.Codes))
	for c := range e.Codes {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	for i, c := range codes {
		codes[i] = fmt.Sprintf("%s:%g", c, e.Codes[c])
	}
	return strings.Join(codes, " ")
}

// WriteTable writes the edges as a table for a terminal.
func (g *Graph) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SOURCE\tDESTINATION\tPROTOCOL\tRATE (%s)\tERRORS\tCODES\tMTLS\n", g.Unit)
	for _, e := range g.Edges {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\n", g.label(e.Source), g.label(e.Dest), e.Protocol, g.rateText(e), errText(e), codesText(e), e.MTLS)
	}
	return tw.Flush()
}

type pageEdge struct {
	Source, Dest, Protocol, Rate, Errors, Codes string
	MTLS                                        bool
}

type pageData struct {
	Title string
	Unit  string
	Nodes []pageNode
	Edges []pageEdge
}

type pageNode struct{ ID, Kind, Label string }

// WriteHTML writes the graph as a self-contained HTML page: the browser draws it (SVG) and
// fills the edge table from the embedded data, so the page works offline.
func (g *Graph) WriteHTML(w io.Writer, title string) error {
	d := pageData{Title: title, Unit: g.Unit}
	ids := make([]string, 0, len(g.Nodes))
	for id := range g.Nodes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		d.Nodes = append(d.Nodes, pageNode{ID: id, Kind: g.Nodes[id].Kind, Label: g.label(id)})
	}
	for _, e := range g.Edges {
		d.Edges = append(d.Edges, pageEdge{Source: g.label(e.Source), Dest: g.label(e.Dest), Protocol: e.Protocol,
			Rate: g.rateText(e), Errors: errText(e), Codes: codesText(e), MTLS: e.MTLS})
	}
	js, err := json.Marshal(d) // escapes <, > and &: safe inside <script>
	if err != nil {
		return err
	}
	return page.Execute(w, struct {
		Title string
		Data  template.JS
	}{title, template.JS(js)})
}

var page = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>
body{font-family:sans-serif;margin:1em}
table{border-collapse:collapse;margin-top:1em}td,th{border:1px solid #999;padding:2px 8px;text-align:left}
.workload{fill:#cfe3ff;stroke:#2a5db0}.service{fill:#fff2c2;stroke:#a07800}.unknown{fill:#eee;stroke:#888}
.edge{stroke:#2a8a2a;stroke-width:2;fill:none}.edge.err{stroke:#c0392b}.edge.plain{stroke-dasharray:6 4}
text{font-size:12px}
</style></head>
<body>
<h1>{{.Title}}</h1>
<p id="legend">Circles are workloads, boxes services. Green edges have no errors, red ones do; dashed edges are not mTLS. Rates: <span id="unit"></span>.</p>
<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="100%" height="400">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#555"/></marker></defs>
</svg>
<table id="edges"><thead><tr><th>source</th><th>destination</th><th>protocol</th><th>rate</th><th>errors</th><th>codes</th><th>mTLS</th></tr></thead><tbody></tbody></table>
<script>
const data = {{.Data}};
document.getElementById("unit").textContent = data.Unit;
const ns = "http://www.w3.org/2000/svg", svg = document.getElementById("graph");
const el = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text) e.textContent = text; return e; };
// Columns by distance from the nodes nothing points at.
const byLabel = {}, depth = {}, incoming = {};
(data.Nodes || []).forEach(n => { byLabel[n.Label] = n; incoming[n.Label] = 0; });
(data.Edges || []).forEach(e => { incoming[e.Dest] = (incoming[e.Dest] || 0) + 1; });
let frontier = Object.keys(byLabel).filter(l => !incoming[l]);
if (!frontier.length) frontier = Object.keys(byLabel).slice(0, 1);
frontier.forEach(l => depth[l] = 0);
for (let d = 0; frontier.length && d < 50; d++) {
  const next = [];
  (data.Edges || []).forEach(e => { if (frontier.includes(e.Source) && depth[e.Dest] === undefined) { depth[e.Dest] = d + 1; next.push(e.Dest); } });
  frontier = next;
}
const cols = {};
Object.keys(byLabel).forEach(l => { const d = depth[l] === undefined ? 0 : depth[l]; (cols[d] = cols[d] || []).push(l); });
const pos = {};
let rows = 1;
Object.keys(cols).forEach(d => { cols[d].forEach((l, i) => { pos[l] = {x: 90 + d * 230, y: 50 + i * 90}; }); rows = Math.max(rows, cols[d].length); });
svg.setAttribute("height", 60 + rows * 90);
(data.Edges || []).forEach(e => {
  const a = pos[e.Source], b = pos[e.Dest];
  if (!a || !b) return;
  const cls = "edge" + (e.Errors !== "-" && e.Errors !== "0%" ? " err" : "") + (e.MTLS ? "" : " plain");
  svg.appendChild(el("line", {class: cls, x1: a.x + 40, y1: a.y, x2: b.x - 40, y2: b.y, "marker-end": "url(#arrow)"}));
  svg.appendChild(el("text", {x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 6, "text-anchor": "middle"}, e.Protocol + " " + e.Rate + (e.Errors !== "-" ? " err " + e.Errors : "") + (e.MTLS ? " mTLS" : "")));
});
Object.keys(pos).forEach(l => {
  const n = byLabel[l], p = pos[l];
  if (n.Kind === "service") svg.appendChild(el("rect", {class: n.Kind, x: p.x - 40, y: p.y - 18, width: 80, height: 36, "data-node": l}));
  else svg.appendChild(el("circle", {class: n.Kind, cx: p.x, cy: p.y, r: 22, "data-node": l}));
  svg.appendChild(el("text", {x: p.x, y: p.y + 36, "text-anchor": "middle"}, l));
});
const tbody = document.querySelector("#edges tbody");
(data.Edges || []).forEach(e => {
  const tr = document.createElement("tr");
  tr.className = "edge-row";
  Object.assign(tr.dataset, {source: e.Source, dest: e.Dest, protocol: e.Protocol, rate: e.Rate, errors: e.Errors, codes: e.Codes, mtls: String(e.MTLS)});
  [e.Source, e.Dest, e.Protocol, e.Rate, e.Errors, e.Codes, e.MTLS ? "yes" : "no"].forEach(v => { const td = document.createElement("td"); td.textContent = v; tr.appendChild(td); });
  tbody.appendChild(tr);
});
</script>
</body></html>
`))
