package policies

import (
	"cmp"
	"slices"

	securityv1beta1 "istio.io/api/security/v1beta1"
)

// MTLSMode is the mutual TLS mode PeerAuthentication gives a destination port.
type MTLSMode string

// The modes of PeerAuthentication (UNSET inherits and never comes out of Mode).
const (
	MTLSStrict     MTLSMode = "STRICT"
	MTLSPermissive MTLSMode = "PERMISSIVE"
	MTLSDisable    MTLSMode = "DISABLE"
)

// PeerAuthn is a compiled set of PeerAuthentication policies.
type PeerAuthn struct {
	root     string
	mesh     *PeerAuthentication
	byNS     map[string]*PeerAuthentication   // namespace-wide (no selector), the oldest one
	workload map[string][]*PeerAuthentication // with a selector, oldest first
}

// CompilePeerAuthentications indexes PeerAuthentications the way Istio resolves them: mesh
// (root namespace, no selector), namespace (no selector), workload (selector); where several
// compete at one level the oldest wins.
func CompilePeerAuthentications(pas []*PeerAuthentication, opts Options) *PeerAuthn {
	p := &PeerAuthn{root: cmp.Or(opts.RootNamespace, DefaultRootNamespace), byNS: map[string]*PeerAuthentication{}, workload: map[string][]*PeerAuthentication{}}
	sorted := slices.Clone(pas)
	slices.SortStableFunc(sorted, olderFirst)
	for _, pa := range sorted {
		switch hasSel := len(pa.Spec.GetSelector().GetMatchLabels()) > 0; {
		case !hasSel && pa.Namespace == p.root:
			if p.mesh == nil {
				p.mesh = pa
			}
		case !hasSel:
			if p.byNS[pa.Namespace] == nil {
				p.byNS[pa.Namespace] = pa
			}
		case pa.Namespace != p.root:
			p.workload[pa.Namespace] = append(p.workload[pa.Namespace], pa)
		}
	}
	return p
}

// olderFirst orders by creationTimestamp (RFC 3339 strings sort in time order), then by key.
func olderFirst(a, b *PeerAuthentication) int {
	return cmp.Or(cmp.Compare(a.CreationTimestamp, b.CreationTimestamp), cmp.Compare(a.Key(), b.Key()))
}

// levels returns the mesh, namespace and workload policies in effect for a workload (any may be nil).
func (p *PeerAuthn) levels(ns string, labels map[string]string) (mesh, nsPol, wl *PeerAuthentication) {
	mesh, nsPol = p.mesh, p.byNS[ns]
	for _, pa := range p.workload[ns] {
		if selects(pa.Spec.GetSelector().GetMatchLabels(), labels) {
			return mesh, nsPol, pa
		}
	}
	return mesh, nsPol, nil
}

// Mode is the mTLS mode for a destination workload's port: the most specific set mode among
// port-level, workload, namespace and mesh policies; PERMISSIVE when none is set.
func (p *PeerAuthn) Mode(ns string, labels map[string]string, port uint16) MTLSMode {
	mesh, nsPol, wl := p.levels(ns, labels)
	mode := MTLSPermissive
	for _, pa := range []*PeerAuthentication{mesh, nsPol, wl} {
		if m := modeOf(pa.GetSpec().GetMtls()); m != "" {
			mode = m
		}
	}
	if wl != nil {
		if m := modeOf(wl.Spec.GetPortLevelMtls()[uint32(port)]); m != "" {
			mode = m
		}
	}
	return mode
}

// GetSpec lets a nil policy read as an empty one.
func (pa *PeerAuthentication) GetSpec() *securityv1beta1.PeerAuthentication {
	if pa == nil {
		return nil
	}
	return pa.Spec
}

func modeOf(m *securityv1beta1.PeerAuthentication_MutualTLS) MTLSMode {
	switch m.GetMode() {
	case securityv1beta1.PeerAuthentication_MutualTLS_STRICT:
		return MTLSStrict
	case securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE:
		return MTLSPermissive
	case securityv1beta1.PeerAuthentication_MutualTLS_DISABLE:
		return MTLSDisable
	}
	return ""
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
