package meshgraph

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/goambient/goambient/internal/promtext"
)

func handsonGraph(t *testing.T) *Graph {
	t.Helper()
	f, err := os.Open("testdata/handson.prom")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := promtext.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	return FromSamples(s)
}

// The edges of handson step 3 from counters: the waypoint's HTTP edge curl → svc handson with
// its 403s (errors 2 of 3) and svc handson → handson-blue, the TCP edge of curl-allow counted
// once although both reporters report it, mTLS everywhere.
const wantTable = `SOURCE               DESTINATION           PROTOCOL  RATE (total)  ERRORS  CODES        MTLS
svc handson/handson  handson/handson-blue  http      1 req         0%      200:1        true
svc handson/handson  handson/handson-blue  tcp       160 B         -                    true
handson/curl         svc handson/handson   http      3 req         67%     200:1 403:2  true
handson/curl-allow   svc handson/handson   tcp       160 B         -                    true
`

func TestTable(t *testing.T) {
	var b bytes.Buffer
	if err := handsonGraph(t).WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if got := b.String(); got != wantTable {
		t.Errorf("table:\n%s\nwant:\n%s", got, wantTable)
	}
}

// TestHTMLInChromium loads the page in headless Chromium (Debian's chromium) and reads the
// edges from the DOM the page's script built: the page draws and lists what the graph holds.
func TestHTMLInChromium(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (Debian: apt-get install chromium): the page is not checked in a browser")
	}
	g := handsonGraph(t)
	dir := t.TempDir()
	page := filepath.Join(dir, "graph.html")
	var b bytes.Buffer
	if err := g.WriteHTML(&b, "handson <step 3>"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(page, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir="+filepath.Join(dir, "profile"),
		"--virtual-time-budget=5000", "--dump-dom", "file://"+page)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("chromium: %v\n%s", err, errOut.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("chromium did not finish in 60 s:\n%s", errOut.String())
	}
	doc, err := html.Parse(&out)
	if err != nil {
		t.Fatal(err)
	}
	var rows []map[string]string
	shapes := 0
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			attrs := map[string]string{}
			for _, a := range n.Attr {
				attrs[a.Key] = a.Val
			}
			if n.Data == "tr" && attrs["class"] == "edge-row" {
				rows = append(rows, attrs)
			}
			if (n.Data == "circle" || n.Data == "rect") && attrs["data-node"] != "" {
				shapes++
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	if len(rows) != len(g.Edges) {
		t.Fatalf("%d edge rows in the DOM, want %d:\n%s", len(rows), len(g.Edges), out.String())
	}
	if shapes != len(g.Nodes) {
		t.Errorf("%d node shapes in the SVG, want %d", shapes, len(g.Nodes))
	}
	want := map[string]string{
		"handson/curl>svc handson/handson>http":         "67% true 200:1 403:2",
		"handson/curl-allow>svc handson/handson>tcp":    "- true ",
		"svc handson/handson>handson/handson-blue>http": "0% true 200:1",
	}
	for _, r := range rows {
		k := r["data-source"] + ">" + r["data-dest"] + ">" + r["data-protocol"]
		if w, ok := want[k]; ok {
			if got := r["data-errors"] + " " + r["data-mtls"] + " " + r["data-codes"]; got != w {
				t.Errorf("edge %s: %q, want %q", k, got, w)
			}
			delete(want, k)
		}
	}
	for k := range want {
		t.Errorf("edge %s not in the DOM", k)
	}
	t.Logf("%d edges and %d nodes read from Chromium's DOM", len(rows), shapes)
}
