package istiooracle

import (
	"testing"

	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/schema/gvk"
	"istio.io/istio/pkg/config/validation"

	"github.com/goambient/goambient/policies"
)

// egressDifferences are the ServiceEntries goambient refuses on purpose while istiod's webhook
// accepts them, with why.
var egressDifferences = map[string]string{
	"ServiceEntry ext/dynamic": "resolution DYNAMIC_DNS needs an egress waypoint with a dynamic forward proxy, which goambient does not have",
}

// TestEgressValidationAgreesWithIstio: every ServiceEntry and WorkloadEntry of the egress
// inputs is refused here exactly when istiod's webhook code (pkg/config/validation) refuses
// it, except egressDifferences.
func TestEgressValidationAgreesWithIstio(t *testing.T) {
	checked := 0
	for _, in := range []string{"../../model/testdata/egress-invalid.yaml", "../../wds/testdata/egress.in.yaml"} {
		set, m := load(t, in)
		refused := map[string]bool{}
		for _, e := range m.Errors {
			if pe, ok := e.(*policies.Error); ok {
				refused[pe.Kind+" "+pe.Object] = true
			}
		}
		for _, se := range set.ServiceEntries {
			key := "ServiceEntry " + cmpOr(se.Metadata.Namespace, "default") + "/" + se.Metadata.Name
			cfg := config.Config{Meta: config.Meta{GroupVersionKind: gvk.ServiceEntry, Name: se.Metadata.Name, Namespace: cmpOr(se.Metadata.Namespace, "default"), Labels: se.Metadata.Labels}, Spec: se.Spec}
			_, err := validation.ValidateServiceEntry(cfg)
			if why, ok := egressDifferences[key]; ok {
				if err != nil || !refused[key] {
					t.Errorf("%s: %s is listed as a deliberate difference (%s), but refused here %v, by istiod: %v", in, key, why, refused[key], err)
				}
				continue
			}
			if refused[key] != (err != nil) {
				t.Errorf("%s: %s: refused here %v, by istiod: %v", in, key, refused[key], err)
			}
			checked++
		}
		for _, we := range set.WorkloadEntries {
			key := "WorkloadEntry " + cmpOr(we.Metadata.Namespace, "default") + "/" + we.Metadata.Name
			cfg := config.Config{Meta: config.Meta{GroupVersionKind: gvk.WorkloadEntry, Name: we.Metadata.Name, Namespace: cmpOr(we.Metadata.Namespace, "default")}, Spec: we.Spec}
			_, err := validation.ValidateWorkloadEntry(cfg)
			if refused[key] != (err != nil) {
				t.Errorf("%s: %s: refused here %v, by istiod: %v", in, key, refused[key], err)
			}
			checked++
		}
	}
	t.Logf("%d objects checked", checked)
}
