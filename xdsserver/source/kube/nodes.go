package kube

import (
	"maps"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/goambient/goambient/xdsserver/model"
)

// topologyLabels are the labels of a Node the mesh reads (its locality).
var topologyLabels = []string{model.LabelTopologyRegion, model.LabelTopologyZone, model.LabelTopologySubzone}

// nodeInformer watches Nodes, keeping of each only its name and topology labels: a Node's
// status (conditions, images, heartbeats) is large and changes often, and the mesh reads
// none of it.
func nodeInformer(kf kubeinformers.SharedInformerFactory) cache.SharedIndexInformer {
	inf := kf.Core().V1().Nodes().Informer()
	// Only fails once the informer runs; it has not been started yet.
	_ = inf.SetTransform(func(o any) (any, error) {
		n, ok := o.(*corev1.Node)
		if !ok {
			return o, nil // a tombstone
		}
		out := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion}}
		for _, l := range topologyLabels {
			if v, ok := n.Labels[l]; ok {
				if out.Labels == nil {
					out.Labels = map[string]string{}
				}
				out.Labels[l] = v
			}
		}
		return out, nil
	})
	return inf
}

// nodeUpdate reports, for two versions of a Node, whether the mesh changed (its locality);
// isNode is false for other kinds.
func nodeUpdate(oldObj, newObj any) (changed, isNode bool) {
	o, ok1 := oldObj.(*corev1.Node)
	n, ok2 := newObj.(*corev1.Node)
	if !ok1 || !ok2 {
		return false, false
	}
	return !maps.Equal(o.Labels, n.Labels), true
}
