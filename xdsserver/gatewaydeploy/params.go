package gatewaydeploy

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// LabelDefaultsForClass marks a ConfigMap of the system namespace that holds the defaults of
// a GatewayClass's Gateways (istiod's GatewayClassDefaults).
const LabelDefaultsForClass = "gateway.istio.io/defaults-for-class"

// ProxyKey is the ConfigMap key that picks a Gateway's proxy (envoy or go), in the class
// defaults or the Gateway's parametersRef; the controller's Options.Proxy otherwise. ConfigMap
// keys cannot hold '/', hence the dot.
const ProxyKey = "goambient.proxy"

// Overlay keys, Istio's: a strategic merge patch (YAML) of the object of that kind.
var overlayKeys = []string{"deployment", "service", "serviceAccount"}

// params are the ConfigMaps' data that apply to a Gateway, the class defaults first.
type params []map[string]string

// check refuses keys this controller does not know (istiod refuses unknown overlays; its
// horizontalPodAutoscaler and podDisruptionBudget are not made here) and a bad proxy.
func (p params) check() error {
	for _, data := range p {
		for k, v := range data {
			switch {
			case k == ProxyKey:
				if _, err := ParseProxy(v); err != nil {
					return fmt.Errorf("%s: %w", ProxyKey, err)
				}
			case !slices.Contains(overlayKeys, k):
				return fmt.Errorf("unsupported key %q (supported: %s, %s)", k, strings.Join(overlayKeys, ", "), ProxyKey)
			}
		}
	}
	return nil
}

// proxy is the last ConfigMap's choice of proxy, else def.
func (p params) proxy(def Proxy) Proxy {
	for _, data := range p {
		if v, ok := data[ProxyKey]; ok {
			def = Proxy(v)
		}
	}
	return def
}

// parametersRef is the ConfigMap named by the Gateway's spec.infrastructure.parametersRef
// ("" when none), or an error when it names another kind.
func parametersRef(gw *gatewayv1.Gateway) (string, error) {
	if gw.Spec.Infrastructure == nil || gw.Spec.Infrastructure.ParametersRef == nil {
		return "", nil
	}
	pr := gw.Spec.Infrastructure.ParametersRef
	if pr.Group != "" || pr.Kind != "ConfigMap" {
		return "", fmt.Errorf("spec.infrastructure.parametersRef: unsupported kind %s/%s (want a ConfigMap)", pr.Group, pr.Kind)
	}
	return pr.Name, nil
}

// rendered is one object to apply, as JSON's generic form.
type rendered struct {
	kind, name string
	obj        map[string]any
}

// overlay turns a typed object into its generic form with the ConfigMaps' overlays of key
// applied in order (strategic merge patch, as istiod), refusing a change of its name,
// namespace or owners.
func (p params) overlay(key string, typed runtime.Object) (map[string]any, error) {
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(typed)
	if err != nil {
		return nil, err
	}
	// Fields a create fills in, never ours to apply.
	delete(obj, "status")
	if md, ok := obj["metadata"].(map[string]any); ok {
		delete(md, "creationTimestamp")
	}
	var schema any
	switch key {
	case "deployment":
		schema = &appsv1.Deployment{}
		spec := obj["spec"].(map[string]any)
		deleteEmpty(spec, "strategy")
		if t, ok := spec["template"].(map[string]any); ok {
			if md, ok := t["metadata"].(map[string]any); ok {
				delete(md, "creationTimestamp")
			}
			cs, _ := t["spec"].(map[string]any)["containers"].([]any)
			for _, c := range cs {
				deleteEmpty(c.(map[string]any), "resources")
			}
		}
	case "service":
		schema = &corev1.Service{}
		ports, _ := obj["spec"].(map[string]any)["ports"].([]any)
		for _, p := range ports { // unset: the API server defaults it to the port
			if pm := p.(map[string]any); pm["targetPort"] == int64(0) {
				delete(pm, "targetPort")
			}
		}
	case "serviceAccount":
		schema = &corev1.ServiceAccount{}
	}
	before, _ := obj["metadata"].(map[string]any)
	before = copyMeta(before)
	for _, data := range p {
		patchYAML, ok := data[key]
		if !ok {
			continue
		}
		var patch map[string]any
		if err := yaml.Unmarshal([]byte(patchYAML), &patch); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		meta, err := strategicpatch.NewPatchMetaFromStruct(schema)
		if err != nil {
			return nil, err
		}
		if obj, err = strategicpatch.StrategicMergeMapPatchUsingLookupPatchMeta(obj, patch, meta); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
	}
	after, _ := obj["metadata"].(map[string]any)
	after = copyMeta(after)
	for _, f := range []string{"name", "namespace", "ownerReferences", "generateName", "uid", "resourceVersion", "finalizers", "managedFields"} {
		if !reflect.DeepEqual(before[f], after[f]) {
			return nil, fmt.Errorf("%s: the overlay may not change metadata.%s", key, f)
		}
	}
	// A round trip through the typed object: an overlay that does not fit the kind fails here.
	b, _ := json.Marshal(obj)
	if err := json.Unmarshal(b, reflect.New(reflect.TypeOf(schema).Elem()).Interface()); err != nil {
		return nil, fmt.Errorf("%s: the overlaid object is not valid: %w", key, err)
	}
	return obj, nil
}

// deleteEmpty removes m[k] when it is an empty object (a Go zero value, not a choice of ours:
// applied, it would own the field).
func deleteEmpty(m map[string]any, k string) {
	if v, ok := m[k].(map[string]any); ok && len(v) == 0 {
		delete(m, k)
	}
}

func copyMeta(m map[string]any) map[string]any {
	b, _ := json.Marshal(m)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}
