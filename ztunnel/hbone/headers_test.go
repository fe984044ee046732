package hbone

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestParseAuthority(t *testing.T) {
	cases := []struct {
		in   string
		ok   bool
		want Authority
	}{
		{"10.0.0.1:8080", true, Authority{Addr: netip.MustParseAddrPort("10.0.0.1:8080"), Host: "10.0.0.1", Port: 8080}},
		{"[fd00::1]:80", true, Authority{Addr: netip.MustParseAddrPort("[fd00::1]:80"), Host: "fd00::1", Port: 80}},
		{"[::ffff:10.0.0.1]:80", true, Authority{Addr: netip.MustParseAddrPort("10.0.0.1:80"), Host: "10.0.0.1", Port: 80}},
		{"reviews.bookinfo.svc.cluster.local:9080", true, Authority{Host: "reviews.bookinfo.svc.cluster.local", Port: 9080}},
		{"reviews", false, Authority{}},
		{"10.0.0.1", false, Authority{}},
		{"10.0.0.1:0", false, Authority{}},
		{"10.0.0.1:70000", false, Authority{}},
		{":80", false, Authority{}},
		{"host:http", false, Authority{}},
		{"", false, Authority{}},
	}
	for _, c := range cases {
		got, ok := ParseAuthority(c.in)
		if ok != c.ok || got != c.want {
			t.Errorf("ParseAuthority(%q) = %+v, %v; want %+v, %v", c.in, got, ok, c.want, c.ok)
		}
		if ok && got.String() != c.in && c.in != "[::ffff:10.0.0.1]:80" {
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), c.in)
		}
	}
}

func TestBaggage(t *testing.T) {
	kv := []KeyValue{{"k8s.cluster.name", "Kubernetes"}, {"service.name", "a b,c;d%e"}, {"service.version", "v1"}}
	v := BaggageValue(kv)
	if v != "k8s.cluster.name=Kubernetes,service.name=a%20b%2Cc%3Bd%25e,service.version=v1" {
		t.Errorf("BaggageValue = %q", v)
	}
	if got := ParseBaggage(v); !reflect.DeepEqual(got, kv) {
		t.Errorf("ParseBaggage = %+v", got)
	}
	if got := ParseBaggage(" a = 1 ;prop, bad ,b=2"); !reflect.DeepEqual(got, []KeyValue{{"a", "1"}, {"b", "2"}}) {
		t.Errorf("ParseBaggage = %+v", got)
	}
}

func TestForwarded(t *testing.T) {
	src := netip.MustParseAddrPort("[fd00::5]:4000")
	v := forwardedValue(src, "")
	if v != `for="[fd00::5]:4000"` {
		t.Errorf("forwarded = %q", v)
	}
	if a, h := ParseForwarded(v); a != src || h != "" {
		t.Errorf("ParseForwarded(%q) = %s, %q", v, a, h)
	}
	if a, h := ParseForwarded(`For="10.1.2.3:5";host=svc.ns.svc.cluster.local, for=1.1.1.1`); a.String() != "10.1.2.3:5" || h != "svc.ns.svc.cluster.local" {
		t.Errorf("ParseForwarded = %s, %q", a, h)
	}
}
