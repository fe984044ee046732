package demo

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
)

// Reply is the chain app's answer: its name, address, and each upstream call's result
// (bookinfo-lite's fake-service).
type Reply struct {
	Name      string         `json:"name"`
	Address   string         `json:"address"`
	Upstreams []UpstreamCall `json:"upstream_calls,omitempty"`
}

// UpstreamCall is one call a chain app made.
type UpstreamCall struct {
	URI   string `json:"uri"`
	Code  int    `json:"code"` // 0: no HTTP response
	Error string `json:"error,omitempty"`
	Reply *Reply `json:"reply,omitempty"`
}

// echoApp is handson-blue: 200 on GET / (and any GET), 405 on other methods.
func echoApp(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", "GET")
			http.Error(w, name+": method not allowed", http.StatusMethodNotAllowed)
			return
		}
		fmt.Fprintf(w, "%s: %s %s\n", name, r.Method, r.URL.Path)
	})
}

// chainApp calls upstream (if any) through socks from its pod address and answers 200 with
// JSON naming itself and the upstream's result.
func chainApp(name, podIP, socks, upstream string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rep := Reply{Name: name, Address: podIP}
		if upstream != "" {
			c := UpstreamCall{URI: upstream}
			res := curl(r.Context(), socks, podIP, "", http.MethodGet, upstream, "", "")
			if res.Status == 0 {
				c.Error = res.String()
			} else {
				c.Code = res.Status
				var sub Reply
				if json.Unmarshal([]byte(res.Body), &sub) == nil {
					c.Reply = &sub
				}
			}
			rep.Upstreams = append(rep.Upstreams, c)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rep)
	})
}

// httpbinApp answers as httpbin does GET /get (200), /status/N (N) and /headers (the request's
// headers as JSON, Host among them); /flaky answers 503 every other request (the first one
// 503), for the retry step of the traffic scenario; /admin/* answers as /headers (the jwt
// scenario's admin area). The pod's name is in X-Pod.
func httpbinApp(name string) http.Handler {
	var flaky atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pod", name)
		if s, ok := strings.CutPrefix(r.URL.Path, "/status/"); ok {
			if code, err := strconv.Atoi(s); err == nil && code >= 100 && code < 600 {
				w.WriteHeader(code)
				return
			}
		}
		path := r.URL.Path
		if strings.HasPrefix(path, "/admin/") {
			path = "/headers"
		}
		switch path {
		case "/get":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, "{\"url\": %q, \"origin\": %q}\n", r.URL.String(), r.RemoteAddr)
		case "/headers":
			h := map[string]string{"Host": r.Host}
			for k, v := range r.Header {
				h[k] = strings.Join(v, ",")
			}
			b, _ := json.MarshalIndent(map[string]any{"headers": h}, "", "  ")
			w.Header().Set("Content-Type", "application/json")
			w.Write(append(b, '\n'))
		case "/flaky":
			if flaky.Add(1)%2 == 1 {
				http.Error(w, name+" flaked", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "%s: ok\n", name)
		default:
			http.NotFound(w, r)
		}
	})
}

// chainOK checks that body is the chain of names, every hop 200.
func chainOK(body string, names []string) error {
	var rep Reply
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		return fmt.Errorf("not a chain reply: %v", err)
	}
	cur := &rep
	for i, n := range names {
		if cur == nil || cur.Name != n {
			return fmt.Errorf("hop %d: want %s, got %+v", i, n, cur)
		}
		if i == len(names)-1 {
			return nil
		}
		if len(cur.Upstreams) != 1 || cur.Upstreams[0].Code != 200 {
			return fmt.Errorf("%s's upstream call: %+v", n, cur.Upstreams)
		}
		cur = cur.Upstreams[0].Reply
	}
	return nil
}

// chainString is "a → 200 b → 200 c" for a chain reply.
func chainString(body string) string {
	var rep Reply
	if json.Unmarshal([]byte(body), &rep) != nil {
		return ""
	}
	var b strings.Builder
	for cur := &rep; cur != nil; {
		b.WriteString(cur.Name)
		if len(cur.Upstreams) == 0 {
			break
		}
		u := cur.Upstreams[0]
		if u.Code == 0 {
			fmt.Fprintf(&b, " → %s (%s)", u.URI, u.Error)
			break
		}
		fmt.Fprintf(&b, " → %d ", u.Code)
		cur = u.Reply
	}
	return b.String()
}
