// Package kubeobj holds the few fields of Kubernetes and Gateway API objects the control plane reads, and decodes them from YAML documents.
package kubeobj
