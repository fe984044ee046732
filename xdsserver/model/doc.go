// Package model is the control plane's typed picture of the mesh (namespaces, services, workloads, waypoints and policies), built and validated from Kubernetes-shaped objects.
package model
