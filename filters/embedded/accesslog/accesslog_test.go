package accesslog

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

func TestLineHasEnvoyFieldNames(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf)
	l.Log(&Entry{
		StartTime: time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC), Method: "POST", Path: "/", Protocol: "HTTP/1.1",
		ResponseCode: 403, ResponseCodeDetails: "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]",
		BytesReceived: 2, BytesSent: 19, Duration: 3 * time.Millisecond, UpstreamServiceTime: -1,
		Authority: "handson:8080", UpstreamCluster: "inbound-vip|8080|http|handson.handson.svc.cluster.local",
		DownstreamRemoteAddress: "127.1.1.3:40000", DownstreamLocalAddress: "127.96.0.1:8080",
	})
	if bytes.Count(buf.Bytes(), []byte("\n")) != 1 {
		t.Fatalf("want one line, got %q", buf.String())
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"start_time": "2026-01-02T03:04:05.006Z", "method": "POST", "path": "/", "protocol": "HTTP/1.1",
		"response_code": 403.0, "response_flags": "-",
		"response_code_details": "rbac_access_denied_matched_policy[ns[handson]-policy[layer7-authz]-rule[0]]",
		"bytes_received":        2.0, "bytes_sent": 19.0, "duration": 3.0, "authority": "handson:8080",
		"upstream_cluster": "inbound-vip|8080|http|handson.handson.svc.cluster.local", "upstream_host": nil,
		"upstream_service_time": nil, "downstream_remote_address": "127.1.1.3:40000", "downstream_local_address": "127.96.0.1:8080",
	}
	for k, v := range want {
		got, ok := m[k]
		if !ok || got != v {
			t.Errorf("%s = %#v (present %v), want %#v", k, got, ok, v)
		}
	}
}
