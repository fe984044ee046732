package app

import (
	"fmt"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/envoyproxy/envoy/contrib/golang/common/go/api"
	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/bootstrap/internal_listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/filters/envoytest"
	"github.com/goambient/goambient/filters/istiostats"
	"github.com/goambient/goambient/internal/promtext"
)

// statStore plays Envoy's stat store for the stats filter's config: the counters it defines,
// by name.
type statStore struct {
	mu       sync.Mutex
	counters map[string]*atomic.Int64
}

type counter struct{ v *atomic.Int64 }

func (c counter) Increment(n int64) { c.v.Add(n) }
func (c counter) Get() uint64       { return uint64(c.v.Load()) }
func (c counter) Record(v uint64)   { c.v.Store(int64(v)) }

func (s *statStore) DefineCounterMetric(name string) api.CounterMetric {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.counters[name] == nil {
		s.counters[name] = &atomic.Int64{}
	}
	return counter{s.counters[name]}
}

func (s *statStore) DefineGaugeMetric(name string) api.GaugeMetric {
	return s.DefineCounterMetric(name)
}

// envoyPrometheus is what Envoy's /stats/prometheus writes for the store, as Prometheus keeps
// it after the scrape config's rename: each name's tags extracted by envoy.yaml's stats_tags
// (Envoy's TagExtractorImpl: the first group leaves the name, the second is the value), the
// rest sanitised and prefixed envoy_ (source/server/admin/prometheus_stats.cc metricName),
// then istiostats.PrometheusRelabel's regex (anchored, as Prometheus anchors it).
func envoyPrometheus(t *testing.T, s *statStore) []promtext.Sample {
	t.Helper()
	data, err := os.ReadFile("../../../envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrap.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatal(err)
	}
	type extractor struct {
		name string
		re   *regexp.Regexp
	}
	var ex []extractor
	for _, tag := range b.GetStatsConfig().GetStatsTags() {
		ex = append(ex, extractor{tag.GetTagName(), regexp.MustCompile(tag.GetRegex())})
	}
	sanitize := regexp.MustCompile(`[^a-zA-Z0-9_]`)
	relabel := regexp.MustCompile(`^(?:envoy_(istio_.*))$`)
	families := map[string][]string{} // Envoy writes each family's samples under one TYPE line
	s.mu.Lock()
	for name, v := range s.counters {
		var tags []string
		for _, e := range ex {
			m := e.re.FindStringSubmatchIndex(name)
			if m == nil {
				continue
			}
			tags = append(tags, fmt.Sprintf("%s=%q", e.name, name[m[4]:m[5]]))
			name = name[:m[2]] + name[m[3]:]
		}
		metric := "envoy_" + sanitize.ReplaceAllString(name, "_")
		if m := relabel.FindStringSubmatch(metric); m != nil {
			metric = m[1]
		}
		families[metric] = append(families[metric], fmt.Sprintf("%s{%s} %d\n", metric, strings.Join(tags, ","), v.Load()))
	}
	s.mu.Unlock()
	var text strings.Builder
	for metric, lines := range families {
		fmt.Fprintf(&text, "# TYPE %s counter\n%s", metric, strings.Join(lines, ""))
	}
	samples, err := promtext.Parse(strings.NewReader(text.String()))
	if err != nil {
		t.Fatalf("Envoy's exposition as emulated: %v\n%s", err, text.String())
	}
	return samples
}

// workloadLabels are the labels the Envoy path cannot fill (its filter has no workload
// metadata): compared by name only.
var workloadLabels = map[string]bool{}

func init() {
	for _, n := range istiostats.LabelNames {
		if strings.Contains(n, "workload") || strings.Contains(n, "canonical") || strings.HasSuffix(n, "_app") ||
			strings.HasSuffix(n, "_version") || strings.HasSuffix(n, "_cluster") || n == "destination_principal" {
			workloadLabels[n] = true
		}
	}
}

// seriesKey is a series' name and label names, and the values of the labels both paths know.
func seriesKey(s promtext.Sample) string {
	var names, vals []string
	for k, v := range s.Labels {
		names = append(names, k)
		if !workloadLabels[k] {
			vals = append(vals, k+"="+v)
		}
	}
	sort.Strings(names)
	sort.Strings(vals)
	return s.Name + " [" + strings.Join(names, ",") + "] {" + strings.Join(vals, ",") + "}"
}

// TestEnvoyPathSeriesMatch: the same requests (handson step 3: a GET allowed, two POSTs
// denied) recorded by the embedded waypoint and by the Envoy path give the same Prometheus
// series: names, label names, the values of every label the Envoy path knows, and the request
// counts. The embedded side is the real waypoint and its /stats/prometheus. There is no Envoy
// binary: the Envoy side is the goambient.stats filter run by filters/envoytest with the
// attributes Envoy's stream info would hold for each request (taken from the embedded
// waypoint's access log of the same requests), its counters turned into Envoy's Prometheus
// output by envoy.yaml's stats_tags as Envoy's tag extraction and formatter do, and renamed as
// the Prometheus scrape config does.
func TestEnvoyPathSeriesMatch(t *testing.T) {
	f := setup(t, wpConfig{metrics: true})
	f.configure(t, true)
	eventually(t, "readiness 200", func() bool { return f.ready() == http.StatusOK })
	s := f.connect(t, "curl")
	if code, _ := s.do(t, "GET", "/", ""); code != 200 {
		t.Fatalf("GET / = %d", code)
	}
	for range 2 {
		if code, _ := s.do(t, "POST", "/", "{}"); code != 403 {
			t.Fatalf("POST / = %d", code)
		}
	}
	embedded := map[string]float64{}
	for _, smp := range scrape(t, f.waypoint) {
		if strings.HasPrefix(smp.Name, "istio_") && !strings.HasSuffix(smp.Name, "_sum") {
			embedded[seriesKey(smp)] = smp.Value
		}
	}

	store := &statStore{counters: map[string]*atomic.Int64{}}
	plugin := envoytest.Plugin{Name: istiostats.PluginName, Factory: istiostats.Factory, Parser: istiostats.Parser{}}
	cfg, err := plugin.Parser.Parse(nil, store)
	if err != nil {
		t.Fatal(err)
	}
	host := envoytest.NewHost(nil)
	for _, e := range f.log.entries(t) {
		str := func(k string) string { v, _ := e[k].(string); return v }
		num := func(k string) string { v, _ := e[k].(float64); return fmt.Sprint(int64(v)) }
		req, _ := http.NewRequest(str("method"), "http://"+str("authority")+str("path"), nil)
		flags := "0"
		if str("response_flags") != "-" {
			t.Fatalf("the requests had response flags %q: this test writes only 0", str("response_flags"))
		}
		host.Do(plugin, cfg, req, envoytest.Stream{
			FilterState:             map[string]string{authzconfig.PeerPrincipalKey: str("downstream_peer_uri_san")},
			DownstreamRemoteAddress: str("downstream_remote_address"),
			DownstreamLocalAddress:  str("downstream_local_address"),
			Properties: map[string]string{
				"xds.cluster_name":    str("upstream_cluster"),
				"response.code":       num("response_code"),
				"response.flags":      flags,
				"request.duration":    num("duration") + "ms",
				"request.total_size":  num("bytes_received"),
				"response.total_size": num("bytes_sent"),
			},
		})
	}
	envoy := map[string]float64{}
	for _, smp := range envoyPrometheus(t, store) {
		if strings.HasPrefix(smp.Name, "istio_") && !strings.HasSuffix(smp.Name, "_sum") {
			envoy[seriesKey(smp)] = smp.Value
		}
	}
	if len(embedded) == 0 {
		t.Fatal("no istio_* series from the embedded waypoint")
	}
	for k, v := range embedded {
		ev, ok := envoy[k]
		switch {
		case !ok:
			t.Errorf("only the embedded waypoint has %s", k)
		case (strings.HasPrefix(k, istiostats.RequestsTotal+" ") || strings.Contains(k, "_count ")) && ev != v:
			t.Errorf("%s: embedded %v, Envoy path %v", k, v, ev)
		}
	}
	for k := range envoy {
		if _, ok := embedded[k]; !ok {
			t.Errorf("only the Envoy path has %s", k)
		}
	}
	t.Logf("%d series compared (request counts, bucket and count series; sums differ by the access log's whole milliseconds)", len(embedded))
}
