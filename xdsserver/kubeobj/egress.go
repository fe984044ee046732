package kubeobj

import (
	"bytes"
	"encoding/json"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/goambient/goambient/policies"
)

// ServiceEntry is a networking.istio.io ServiceEntry, its spec in istio.io/api's type (the
// same message for v1, v1beta1 and v1alpha3), with the addresses istiod's IP auto-allocation
// wrote to its status.
type ServiceEntry struct {
	Metadata ObjectMeta
	Spec     *networking.ServiceEntry
	Status   []ServiceEntryAddress
	Origin   policies.Origin
}

// ServiceEntryAddress is one status.addresses item: an address allocated to one host.
type ServiceEntryAddress struct {
	Value string `json:"value"`
	Host  string `json:"host"`
}

// WorkloadEntry is a networking.istio.io WorkloadEntry: a workload that is not a pod (a VM).
type WorkloadEntry struct {
	Metadata ObjectMeta
	Spec     *networking.WorkloadEntry
	Origin   policies.Origin
}

func init() {
	for _, k := range []string{"networking.istio.io/ServiceEntry", "networking.istio.io/WorkloadEntry"} {
		routingKinds[k] = []string{"v1", "v1beta1", "v1alpha3"}
		kinds[k] = routingKinds[k]
	}
}

// addEgress decodes a ServiceEntry or WorkloadEntry spec strictly (an unknown field is an
// error, as kubectl's field validation makes it).
func (s *Set) addEgress(d policies.Document, kind string, meta ObjectMeta, spec []byte, fail func(field, reason string) error) error {
	switch kind {
	case "ServiceEntry":
		o := &ServiceEntry{Metadata: meta, Spec: &networking.ServiceEntry{}, Origin: d.Origin}
		if err := istioJSON.Unmarshal(bytes.NewReader(spec), o.Spec); err != nil {
			return fail("spec", protoReason(err))
		}
		var st struct {
			Status struct {
				Addresses []ServiceEntryAddress `json:"addresses"`
			} `json:"status"`
		}
		if err := json.Unmarshal(d.JSON, &st); err != nil {
			return fail("status", jsonReason(err))
		}
		o.Status = st.Status.Addresses
		s.ServiceEntries = append(s.ServiceEntries, o)
	case "WorkloadEntry":
		o := &WorkloadEntry{Metadata: meta, Spec: &networking.WorkloadEntry{}, Origin: d.Origin}
		if err := istioJSON.Unmarshal(bytes.NewReader(spec), o.Spec); err != nil {
			return fail("spec", protoReason(err))
		}
		s.WorkloadEntries = append(s.WorkloadEntries, o)
	}
	return nil
}
