package proxy

import (
	"slices"
	"strings"

	"istio.io/istio/pkg/workloadapi"

	"github.com/goambient/goambient/ztunnel/state"
)

// guessInboundService is the Service an inbound connection was for, as Istio's ztunnel guesses
// it (src/proxy.rs guess_inbound_service) for the destination_service labels: among the
// destination workload's own Services (a bounded set, so a client's claim picks at most one of
// them), the one the forwarded host names, else the first whose target port is the
// connection's port. Services are taken in key order (ztunnel's in its list's).
func guessInboundService(st *state.State, dst *workloadapi.Workload, host string, port uint16) *workloadapi.Service {
	keys := make([]string, 0, len(dst.GetServices()))
	for k := range dst.GetServices() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if host != "" {
		for _, k := range keys {
			if _, h, _ := strings.Cut(k, "/"); h == host {
				if sv := st.Service(k); sv != nil {
					return sv
				}
			}
		}
	}
	for _, k := range keys {
		for _, pt := range dst.GetServices()[k].GetPorts() {
			if uint16(pt.GetTargetPort()) == port || (pt.GetTargetPort() == 0 && uint16(pt.GetServicePort()) == port) {
				if sv := st.Service(k); sv != nil {
					return sv
				}
			}
		}
	}
	return nil
}
