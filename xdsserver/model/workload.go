package model

import (
	"strings"

	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// workloadName is the name of the controller that owns a pod, as Istio's
// GetWorkloadMetaFromPod derives it: a ReplicaSet's Deployment (the ReplicaSet name without its
// pod-template-hash), a Job's CronJob (without the schedule suffix), another controller's name,
// or the pod's own name.
func workloadName(p *kubeobj.Pod) string {
	for _, o := range p.Metadata.OwnerReferences {
		if o.Controller == nil || !*o.Controller {
			continue
		}
		switch o.Kind {
		case "ReplicaSet":
			if h := p.Metadata.Labels["pod-template-hash"]; h != "" {
				if name, ok := strings.CutSuffix(o.Name, "-"+h); ok {
					return name
				}
			}
		case "Job":
			// A CronJob's Job is named <cronjob>-<scheduled time in minutes>.
			if i := strings.LastIndexByte(o.Name, '-'); i > 0 && isDigits(o.Name[i+1:]) {
				return o.Name[:i]
			}
		}
		return o.Name
	}
	return p.Metadata.Name
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

var (
	canonicalNameLabels     = []string{"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"}
	canonicalRevisionLabels = []string{"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"}
)

// canonicalService is Istio's CanonicalService: the first of the canonical-name labels, else
// the workload name; the first of the revision labels, else "latest".
func canonicalService(labels map[string]string, workloadName string) (string, string) {
	name, rev := workloadName, "latest"
	for _, l := range canonicalNameLabels {
		if v, ok := labels[l]; ok {
			name = v
			break
		}
	}
	for _, l := range canonicalRevisionLabels {
		if v, ok := labels[l]; ok {
			rev = v
			break
		}
	}
	return name, rev
}
