package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/goambient/goambient/xdsserver/wds"
)

// syncTimeout bounds how long a configuration change may take to reach every ztunnel.
const syncTimeout = 15 * time.Second

// expected is the workload API state of the config folder, keyed by resource name.
func (s *stack) expected() (map[string]proto.Message, error) {
	m, err := loadMesh(s.cni.wp, s.configDir)
	if err != nil {
		return nil, err
	}
	r := wds.Translate(m, wds.Options{})
	want := map[string]proto.Message{}
	for _, a := range r.Addresses {
		want[wds.AddressName(a)] = addressMessage(a)
	}
	for _, a := range r.Authorizations {
		want["authz "+a.GetNamespace()+"/"+a.GetName()] = a
	}
	return want, nil
}

func addressMessage(a *workloadapi.Address) proto.Message {
	if w := a.GetWorkload(); w != nil {
		return w
	}
	return a.GetService()
}

// dump reads a ztunnel's /config_dump, keyed as expected keys it.
func dump(host string) (map[string]proto.Message, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + host + ":15000/config_dump")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Workloads      []json.RawMessage `json:"workloads"`
		Services       []json.RawMessage `json:"services"`
		Authorizations []json.RawMessage `json:"authorizations"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	got := map[string]proto.Message{}
	for _, js := range doc.Workloads {
		w := &workloadapi.Workload{}
		if err := protojson.Unmarshal(js, w); err != nil {
			return nil, err
		}
		got[w.GetUid()] = w
	}
	for _, js := range doc.Services {
		sv := &workloadapi.Service{}
		if err := protojson.Unmarshal(js, sv); err != nil {
			return nil, err
		}
		got[wds.AddressName(&workloadapi.Address{Type: &workloadapi.Address_Service{Service: sv}})] = sv
	}
	for _, js := range doc.Authorizations {
		a := &security.Authorization{}
		if err := protojson.Unmarshal(js, a); err != nil {
			return nil, err
		}
		got["authz "+a.GetNamespace()+"/"+a.GetName()] = a
	}
	return got, nil
}

// diff says how got differs from want ("" when equal).
func diff(want, got map[string]proto.Message) string {
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			return "missing " + k
		}
		if !proto.Equal(w, g) {
			return "different " + k
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			return "extra " + k
		}
	}
	return ""
}

// waitSynced waits until every ztunnel holds the state the config folder translates to.
func (s *stack) waitSynced(ctx context.Context) error {
	want, err := s.expected()
	if err != nil {
		return err
	}
	for _, n := range s.sc.Nodes {
		var last string
		err := s.poll(ctx, syncTimeout, "ztunnel "+n+" to receive the new configuration", s.ztunnels[n], func() bool {
			got, err := dump(s.hosts[n])
			if err != nil {
				last = err.Error()
				return false
			}
			last = diff(want, got)
			return last == ""
		})
		if err != nil {
			return fmt.Errorf("%w (last difference: %s)", err, last)
		}
	}
	return nil
}
