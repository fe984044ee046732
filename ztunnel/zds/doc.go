// Package zds is the ztunnel side of istio-cni's ZDS protocol: it connects to the node agent's unix socket, receives the pods to serve with their network namespaces, hands them to the proxy and acknowledges each request.
package zds
