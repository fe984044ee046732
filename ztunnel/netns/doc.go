// Package netns opens sockets inside Linux network namespaces and writes the in-pod redirection rules, so that one ztunnel serves each pod from inside the pod's own namespace as Istio's in-pod mode does.
package netns

// Mark is the socket mark (SO_MARK) of the sockets ztunnel opens inside a pod's namespace, and
// the packet mark the in-pod rules let through unredirected: Istio's InpodMark (1337, matched
// with mask 0xfff), which its ztunnel and istio-cni share.
const (
	Mark     = 0x539
	MarkMask = 0xfff
)

// Istio's in-pod ports: outbound capture, inbound plaintext, inbound HBONE.
const (
	PortOutbound         = 15001
	PortInboundPlaintext = 15006
	PortInboundHBONE     = 15008
)
