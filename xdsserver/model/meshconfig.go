package model

import (
	"errors"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/policies/meshconfig"
	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// buildMeshConfig reads the mesh config of the `istio` ConfigMap in the root namespace (key
// "mesh"), as istiod does; its invalid extension providers are reported and left out.
func (b *builder) buildMeshConfig(cms []*kubeobj.ConfigMap) {
	var cm *kubeobj.ConfigMap
	for _, c := range cms {
		if c.Metadata.Namespace == b.cfg.RootNamespace && c.Metadata.Name == kubeobj.MeshConfigMapName {
			cm = c // the last definition wins, as for every object
		}
	}
	if cm == nil {
		return
	}
	key := cm.Metadata.Namespace + "/" + cm.Metadata.Name
	mc, errs := meshconfig.Parse([]byte(cm.Data[meshconfig.ConfigMapKey]), "data.mesh")
	for _, err := range errs {
		field, reason := "data.mesh", err.Error()
		var me *meshconfig.Error
		if errors.As(err, &me) {
			field, reason = "data.mesh: "+me.Field, me.Reason
		}
		b.m.Errors = append(b.m.Errors, &policies.Error{Origin: cm.Origin, Kind: "ConfigMap", Object: key, Field: field, Reason: reason})
	}
	b.m.MeshConfig = mc
	if mc != nil && mc.OutboundTrafficPolicy != "" {
		// It changes nothing for ambient workloads, as in Istio (see the model's README); kept
		// so that what a user configured is visible where the mesh is.
		b.m.OutboundTrafficPolicy = mc.OutboundTrafficPolicy
	}
}
