package promtext

import (
	"fmt"
	"strings"
	"testing"
)

// Histograms are flattened as Prometheus stores them (le as Prometheus writes it, +Inf once),
// empty labels dropped, counters and gauges kept.
func TestParse(t *testing.T) {
	in := `# TYPE h histogram
h_bucket{a="x",g="",le="0.5"} 1
h_bucket{a="x",g="",le="3.6e+06"} 2
h_bucket{a="x",g="",le="+Inf"} 3
h_sum{a="x",g=""} 7
h_count{a="x",g=""} 3
# TYPE c counter
c{b="y"} 4
`
	s, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range s {
		got = append(got, fmt.Sprintf("%s %g", x.Key(), x.Value))
	}
	want := `c{b="y"} 4|h_bucket{a="x",le="0.5"} 1|h_bucket{a="x",le="3600000"} 2|h_bucket{a="x",le="+Inf"} 3|h_sum{a="x"} 7|h_count{a="x"} 3`
	if g := strings.Join(got, "|"); g != want {
		t.Errorf("got  %s\nwant %s", g, want)
	}
	if _, err := Parse(strings.NewReader("not a metric line {")); err == nil {
		t.Error("a malformed exposition parsed")
	}
}
