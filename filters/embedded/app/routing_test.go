package app

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// call is one request of a routing case and what must come of it.
type call struct {
	sa, method, path string
	hdr              map[string]string
	// The answer: its status, its body when set, the pod that answered (X-Pod; "-": none),
	// its headers ("" value: absent).
	code   int
	body   string
	pod    string
	header map[string]string
	// What the pod saw: its request line, and headers from /headers ("" value: absent).
	line string
	saw  map[string]string
	// At least this long (injected delays).
	atLeast time.Duration
	// The access-log line: route_name, upstream_cluster, response_flags, response_code_details
	// ("": not checked, "null": absent).
	route, cluster, flags, details string
}

// routingCase is YAML applied to the traffic scenario and requests through the waypoint.
type routingCase struct {
	name  string
	yaml  string
	calls []call
	// after runs further checks once the calls are made.
	after func(t *testing.T, f *traffic)
}

var routingCases = []routingCase{
	{
		name: "VirtualService: a header match routes to a subset, the rest to another",
		yaml: subsets + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: appb, subset: v2}}]
  - name: rest
    route: [{destination: {host: appb, subset: v1}}]
`,
		calls: []call{
			{path: "/", hdr: map[string]string{"end-user": "jason"}, code: 200, pod: "appb-v2", route: "jason", cluster: appbV2, flags: "-", details: "via_upstream"},
			{path: "/", hdr: map[string]string{"end-user": "jasonx"}, code: 200, pod: "appb-v1", route: "rest", cluster: appbV1, flags: "-", details: "via_upstream"},
			{path: "/", code: 200, pod: "appb-v1", route: "rest", cluster: appbV1},
		},
	},
	{
		name: "VirtualService: exact, regex and case-insensitive paths, method and query parameters; first match wins",
		yaml: subsets + `
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb.default.svc.cluster.local]
  http:
  - name: exact-post
    match: [{uri: {exact: /exact}, method: {exact: POST}}]
    route: [{destination: {host: appb, subset: v2}}]
  - name: regex
    match: [{uri: {regex: "/id/[0-9]+"}}]
    route: [{destination: {host: appb, subset: v2}}]
  - name: query
    match: [{queryParams: {debug: {exact: "1"}}}]
    route: [{destination: {host: appb, subset: v2}}]
  - name: nocase
    match: [{uri: {prefix: /CaSe}, ignoreUriCase: true}]
    route: [{destination: {host: appb, subset: v2}}]
  - name: exact-any
    match: [{uri: {exact: /exact}}]
    route: [{destination: {host: appb, subset: v1}}]
  - name: rest
    route: [{destination: {host: appb, subset: v1}}]
`,
		calls: []call{
			{method: "POST", path: "/exact", code: 200, pod: "appb-v2", route: "exact-post"},
			{path: "/exact", code: 200, pod: "appb-v1", route: "exact-any"},
			{path: "/id/42", code: 200, pod: "appb-v2", route: "regex"},
			{path: "/id/42x", code: 200, pod: "appb-v1", route: "rest"},
			{path: "/x?debug=1", code: 200, pod: "appb-v2", route: "query", line: "GET /x?debug=1"},
			{path: "/x?debug=10", code: 200, pod: "appb-v1", route: "rest"},
			{path: "/case/x", code: 200, pod: "appb-v2", route: "nocase"},
		},
	},
	{
		name: "VirtualService without a catch-all: 404 route_not_found (NR) for what no rule matches",
		yaml: `
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - match: [{uri: {prefix: /only}}]
    route: [{destination: {host: appb}}]
`,
		calls: []call{
			{path: "/", code: 404, body: "", pod: "-", route: "null", cluster: "null", flags: "NR", details: "route_not_found"},
			{path: "/only/x", code: 200, cluster: appbAll, flags: "-"},
		},
	},
	{
		name: "VirtualService rewrites: uri prefix and authority, regex",
		yaml: subsets + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /headers, authority: rewritten.example}
    route: [{destination: {host: appb, subset: v1}}]
  - match: [{uri: {prefix: /re/}}]
    rewrite: {uriRegexRewrite: {match: "^/re/([a-z]+)/.*$", rewrite: "/\\1"}}
    route: [{destination: {host: appb, subset: v1}}]
  - route: [{destination: {host: appb, subset: v1}}]
`,
		calls: []call{
			{path: "/old", code: 200, pod: "appb-v1", line: "GET /headers", saw: map[string]string{"Host": "rewritten.example"}},
			{path: "/old?x=1", code: 200, pod: "appb-v1", line: "GET /headers?x=1"},
			{path: "/re/headers/ignored", code: 200, pod: "appb-v1", line: "GET /headers", saw: map[string]string{"Host": "appb:8000"}},
		},
	},
	{
		name: "VirtualService headers: request and response set, add, remove; the destination's after the rule's",
		yaml: subsets + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - headers:
      request: {set: {x-set: one}, add: {x-add: two}, remove: [x-drop]}
      response: {set: {x-resp: three}, remove: [x-pod]}
    route:
    - destination: {host: appb, subset: v2}
      headers: {request: {set: {x-set: dest}}, response: {add: {x-dest: v2}}}
`,
		calls: []call{
			{path: "/headers", hdr: map[string]string{"x-drop": "gone", "x-set": "client", "x-add": "client"}, code: 200, pod: "-",
				saw:    map[string]string{"X-Set": "dest", "X-Add": "client,two", "X-Drop": ""},
				header: map[string]string{"X-Resp": "three", "X-Dest": "v2", "X-Pod": ""}, cluster: appbV2},
		},
	},
	{
		name: "VirtualService redirect and direct response: answered by the waypoint",
		yaml: `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - name: moved
    match: [{uri: {prefix: /moved}}]
    redirect: {uri: /new, redirectCode: 308}
  - name: elsewhere
    match: [{uri: {prefix: /elsewhere}}]
    redirect: {authority: other.example, uri: /x}
  - name: teapot
    match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: short and stout}}
  - route: [{destination: {host: appb}}]
`,
		calls: []call{
			{path: "/moved?q=1", code: 308, pod: "-", header: map[string]string{"Location": "http://appb:8000/new?q=1"}, route: "moved", flags: "-", details: "direct_response"},
			{path: "/elsewhere", code: 301, pod: "-", header: map[string]string{"Location": "http://other.example/x"}, route: "elsewhere"},
			{path: "/teapot", code: 418, body: "short and stout", pod: "-", route: "teapot", details: "direct_response"},
		},
		after: noRequests,
	},
	{
		name: "VirtualService fault: abort 418 (FI), delay (DI)",
		yaml: `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - name: abort
    match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: appb}}]
  - name: delay
    match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 150ms, percentage: {value: 100}}}
    route: [{destination: {host: appb}}]
  - name: never
    fault: {abort: {httpStatus: 500}}
    route: [{destination: {host: appb}}]
`,
		calls: []call{
			{path: "/abort", code: 418, body: "fault filter abort", pod: "-", route: "abort", cluster: appbAll, flags: "FI", details: "fault_filter_abort"},
			{path: "/delay/0", code: 200, atLeast: 150 * time.Millisecond, route: "delay", flags: "DI", details: "via_upstream"},
			// No percentage: 0%, as istiod translates it.
			{path: "/", code: 200, route: "never", flags: "-"},
		},
	},
	{
		name: "authorization runs before the fault filter: a denied request is not delayed (DI absent)",
		yaml: `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - name: slow
    fault: {delay: {fixedDelay: 150ms, percentage: {value: 100}}}
    route: [{destination: {host: appb}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-mallory}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/mallory]}}]}]
`,
		calls: []call{
			{sa: "mallory", path: "/", code: 403, body: "RBAC: access denied", pod: "-", route: "slow", flags: "-",
				details: "rbac_access_denied_matched_policy[ns[default]-policy[no-mallory]-rule[0]]"},
			{path: "/", code: 200, atLeast: 150 * time.Millisecond, route: "slow", flags: "DI", details: "via_upstream"},
		},
	},
	{
		name: "VirtualService timeout: 504 upstream_response_timeout (UT)",
		yaml: `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - timeout: 100ms
    route: [{destination: {host: appb}}]
`,
		calls: []call{
			{path: "/delay/30000", code: 504, body: "upstream request timeout", pod: "-", flags: "UT", details: "upstream_response_timeout"},
			{path: "/delay/0", code: 200, flags: "-"},
		},
	},
	{
		name: "VirtualService retries: a 503 retried into a 200; exhausted (URX); turned off",
		yaml: subsets + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - name: retried
    match: [{uri: {exact: /flaky}}]
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: appb, subset: v1}}]
  - name: exhausted
    match: [{uri: {prefix: /status}}]
    retries: {attempts: 2, retryOn: "503"}
    route: [{destination: {host: appb, subset: v1}}]
  - name: no-retries
    retries: {attempts: 0}
    route: [{destination: {host: appb, subset: v2}}]
`,
		calls: []call{
			{path: "/flaky", code: 200, body: "appb-v1 ok", route: "retried", flags: "-", details: "via_upstream"},
			{path: "/status/503", code: 503, pod: "appb-v1", route: "exhausted", flags: "URX", details: "via_upstream"},
			{path: "/flaky/again", code: 503, pod: "appb-v2", route: "no-retries", flags: "-"},
		},
		after: func(t *testing.T, f *traffic) {
			// /flaky once, retried once; /status/503 three times.
			if got := f.v1.requests(); strings.Join(got, ",") != "GET /flaky,GET /flaky,GET /status/503,GET /status/503,GET /status/503" {
				t.Errorf("appb-v1 saw %v", got)
			}
		},
	},
	{
		name: "VirtualService per-try timeout: each try cut, retried, then 504 upstream_per_try_timeout",
		yaml: subsets + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - timeout: 20s
    retries: {attempts: 1, perTryTimeout: 100ms, retryOn: gateway-error}
    route: [{destination: {host: appb, subset: v1}}]
`,
		calls: []call{
			{path: "/delay/30000", code: 504, body: "upstream request timeout", pod: "-", flags: "UT,URX", details: "upstream_per_try_timeout"},
		},
	},
	{
		name: "VirtualService mirror: the copy goes to the mirror, the answer from the route",
		yaml: subsets + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - mirror: {host: appb, subset: v2}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: appb, subset: v1}}]
`,
		calls: []call{{path: "/shadowed", code: 200, pod: "appb-v1", cluster: appbV1, flags: "-"}},
		after: func(t *testing.T, f *traffic) {
			eventually(t, "appb-v2 to get the mirrored request", func() bool {
				return slices.Contains(f.v2.requests(), "GET /shadowed")
			})
		},
	},
	{
		name: "VirtualService destinations: a zero weight is left out; no endpoint 503 UH; an unknown subset 503 NC",
		yaml: subsets + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - name: empty
    match: [{uri: {prefix: /empty}}]
    route: [{destination: {host: empty}}]
  - name: v3
    match: [{uri: {prefix: /v3}}]
    route: [{destination: {host: appb, subset: v3}}]
  - name: weights
    route:
    - {destination: {host: appb, subset: v1}, weight: 0}
    - {destination: {host: appb, subset: v2}, weight: 100}
`,
		calls: []call{
			{path: "/empty", code: 503, body: "no healthy upstream", pod: "-", route: "empty", cluster: "inbound-vip|8000|http|empty.default.svc.cluster.local", flags: "UH", details: "no_healthy_upstream"},
			{path: "/v3", code: 503, pod: "-", route: "v3", cluster: "inbound-vip|8000|http/v3|" + appbHost, flags: "NC", details: "cluster_not_found"},
			{path: "/", code: 200, pod: "appb-v2", route: "weights", cluster: appbV2},
			{path: "/", code: 200, pod: "appb-v2", route: "weights", cluster: appbV2},
		},
	},
	{
		name: "HTTPRoute: header and URL rewrite filters, redirect, mirror, weights; path prefixes are path-separated",
		yaml: `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: appb}
spec:
  parentRefs: [{group: "", kind: Service, name: appb, port: 8000}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-set, value: one}], add: [{name: x-add, value: two}], remove: [x-drop]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-resp, value: three}], remove: [x-pod]}
    - type: URLRewrite
      urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /headers}}
    backendRefs: [{name: appb-v2, port: 8000}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 302}}]
  - matches: [{path: {type: PathPrefix, value: /shadow}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: appb-v2, port: 8000}}}]
    backendRefs: [{name: appb-v1, port: 8000}]
  - backendRefs: [{name: appb-v1, port: 8000, weight: 1}, {name: appb-v2, port: 8000, weight: 0}]
`,
		calls: []call{
			{path: "/api", hdr: map[string]string{"x-drop": "gone", "x-add": "client"}, code: 200, pod: "-", line: "GET /headers",
				saw:    map[string]string{"Host": "rewritten.example", "X-Set": "one", "X-Add": "client,two", "X-Drop": ""},
				header: map[string]string{"X-Resp": "three", "X-Pod": ""}, route: "default.appb.0", cluster: "inbound-vip|8000|http|appb-v2.default.svc.cluster.local"},
			{path: "/apix", code: 200, pod: "appb-v1", route: "default.appb.3"},
			{path: "/old/x?q=1", code: 302, pod: "-", header: map[string]string{"Location": "http://appb:8000/new?q=1"}, route: "default.appb.1", details: "direct_response"},
			{path: "/shadow", code: 200, pod: "appb-v1", route: "default.appb.2", cluster: "inbound-vip|8000|http|appb-v1.default.svc.cluster.local"},
			{path: "/", code: 200, pod: "appb-v1", route: "default.appb.3"},
		},
		after: func(t *testing.T, f *traffic) {
			eventually(t, "appb-v2 to get the mirrored request", func() bool {
				return slices.Contains(f.v2.requests(), "GET /shadow")
			})
		},
	},
	{
		name: "HTTPRoute timeouts and retry; an unknown backend answers 500 (NC)",
		yaml: `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: appb}
spec:
  parentRefs: [{kind: Service, name: appb}]
  rules:
  - name: slow
    matches: [{path: {type: PathPrefix, value: /delay}}]
    timeouts: {request: 100ms}
    backendRefs: [{name: appb-v1, port: 8000}]
  - name: flaky
    matches: [{path: {type: Exact, value: /flaky}}]
    retry: {attempts: 2, codes: [503]}
    backendRefs: [{name: appb-v1, port: 8000}]
  - name: gone
    matches: [{path: {type: PathPrefix, value: /gone}}]
    backendRefs: [{name: nosuch, port: 8000}]
`,
		calls: []call{
			{path: "/delay/30000", code: 504, pod: "-", route: "slow", flags: "UT", details: "upstream_response_timeout"},
			{path: "/flaky", code: 200, body: "appb-v1 ok", route: "flaky", flags: "-"},
			{path: "/gone", code: 500, pod: "-", route: "gone", cluster: "inbound-vip|8000|http|nosuch.default.svc.cluster.local", flags: "NC", details: "cluster_not_found"},
		},
	},
	{
		name: "an HTTPRoute and a VirtualService for one Service: HTTPRoute rules first, the VirtualService for the rest",
		yaml: `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: appb}
spec:
  parentRefs: [{kind: Service, name: appb}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: appb-v2, port: 8000}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: appb}
spec:
  hosts: [appb]
  http:
  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: appb}}]
`,
		calls: []call{
			{path: "/api/x", code: 200, pod: "appb-v2", route: "default.appb.0"},
			{path: "/other", code: 418, pod: "-", flags: "FI"},
		},
	},
}

// noRequests checks that no pod got a request.
func noRequests(t *testing.T, f *traffic) {
	if got := append(f.v1.requests(), f.v2.requests()...); len(got) > 0 {
		t.Errorf("the pods got %v, want nothing: the waypoint answers", got)
	}
}

// TestRouting runs each case's YAML through xdsserver's translation into the embedded
// waypoint, which routes with the RDS, CDS and EDS it receives, and checks each answer, what
// the pods saw and the access log. Peers: the real translators (model, wds, waypointxds), a
// go-control-plane ADS server, HBONE pods with httpbin-like apps.
func TestRouting(t *testing.T) {
	for _, tc := range routingCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := setupTraffic(t, 1)
			f.apply(t, tc.yaml)
			for i, c := range tc.calls {
				runCall(t, f, i, c)
			}
			if tc.after != nil {
				tc.after(t, f)
			}
		})
	}
}

func runCall(t *testing.T, f *traffic, i int, c call) {
	t.Helper()
	if c.method == "" {
		c.method = "GET"
	}
	v1, v2 := len(f.v1.requests()), len(f.v2.requests())
	logs := len(f.log.entries(t))
	what := c.method + " " + c.path
	r := f.client(t, c.sa).send(t, c.method, c.path, "", c.hdr)
	if r.code != c.code {
		t.Fatalf("%s: %d %q, want %d", what, r.code, r.body, c.code)
	}
	if c.body != "" && r.body != c.body || c.body == "" && c.code == 404 && r.body != "" {
		t.Errorf("%s: body %q, want %q", what, r.body, c.body)
	}
	pod := r.header.Get("X-Pod")
	switch {
	case c.pod == "-" && pod != "":
		t.Errorf("%s: answered by %s, want the waypoint", what, pod)
	case c.pod != "" && c.pod != "-" && pod != c.pod:
		t.Errorf("%s: answered by %q, want %s", what, pod, c.pod)
	}
	for k, v := range c.header {
		if got := r.header.Get(k); got != v {
			t.Errorf("%s: answer header %s = %q, want %q", what, k, got, v)
		}
	}
	if c.line != "" {
		var got []string
		if reqs := f.v1.requests(); len(reqs) > v1 {
			got = append(got, reqs[v1:]...)
		}
		if reqs := f.v2.requests(); len(reqs) > v2 {
			got = append(got, reqs[v2:]...)
		}
		if !slices.Contains(got, c.line) {
			t.Errorf("%s: the pods saw %v, want %q", what, got, c.line)
		}
	}
	if c.saw != nil {
		s := parseSeen(t, r.body)
		for k, v := range c.saw {
			if got := s.Headers[k]; got != v {
				t.Errorf("%s: the pod saw %s = %q, want %q", what, k, got, v)
			}
		}
	}
	if r.took < c.atLeast {
		t.Errorf("%s: answered after %v, want at least %v", what, r.took, c.atLeast)
	}
	entries := f.log.entries(t)
	if len(entries) != logs+1 {
		t.Fatalf("%s: %d access-log lines, want one more than %d", what, len(entries), logs)
	}
	e := entries[logs]
	check := func(field, want string) {
		got := logField(e, field)
		if want == "null" && got != "" || want != "" && want != "null" && got != want {
			t.Errorf("%s (call %d): access log %s = %q, want %q", what, i, field, got, want)
		}
	}
	check("route_name", c.route)
	check("upstream_cluster", c.cluster)
	check("response_flags", c.flags)
	check("response_code_details", c.details)
	if got := logField(e, "response_code"); got != strconv.Itoa(c.code) {
		t.Errorf("%s: access log response_code = %s, want %d", what, got, c.code)
	}
}
