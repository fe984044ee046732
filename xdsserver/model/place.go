package model

import (
	"encoding/binary"
	"hash/fnv"
	"net/netip"
	"slices"
)

// place gives addresses to pods and Services: those the input gives are kept (the second object
// to claim an address is left out); the others get one from the Placement's ranges. An
// allocated address is derived from a hash of the object's namespace and name, probing upward
// past taken ones, so adding or removing an object does not move the others (a sequential
// allocation would renumber every pod after it).
func (b *builder) place() {
	byKey := func(a, b *Workload) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) }
	slices.SortStableFunc(b.workloads, byKey)
	slices.SortStableFunc(b.services, func(a, b *Service) int { return compareKey(a.Namespace, a.Name, b.Namespace, b.Name) })
	b.workloads = slices.DeleteFunc(b.workloads, func(w *Workload) bool {
		if w.HostNetwork {
			return false // a host-network pod shares its node's address
		}
		for _, ip := range w.IPs {
			if owner, taken := b.addrs[ip]; taken {
				b.fail(w.Origin, "Pod", w.Key(), "status.podIP", "%s is already the address of %s", ip, owner)
				return true
			}
		}
		for _, ip := range w.IPs {
			b.addrs[ip] = "Pod " + w.Key()
		}
		return false
	})
	b.services = slices.DeleteFunc(b.services, func(s *Service) bool {
		for _, ip := range s.VIPs {
			if owner, taken := b.addrs[ip]; taken {
				b.fail(s.Origin, "Service", s.Key(), "spec.clusterIP", "%s is already the address of %s", ip, owner)
				return true
			}
		}
		for _, ip := range s.VIPs {
			b.addrs[ip] = "Service " + s.Key()
		}
		return false
	})
	if b.cfg.FromCluster {
		// The kubelet has not reported the pod's IP yet: not a problem, a pod starting.
		b.workloads = slices.DeleteFunc(b.workloads, func(w *Workload) bool { return len(w.IPs) == 0 })
		return
	}
	b.workloads = slices.DeleteFunc(b.workloads, func(w *Workload) bool {
		if len(w.IPs) > 0 {
			return false
		}
		ip, ok := b.allocate(b.cfg.Placement.PodCIDR, w.Key(), "Pod "+w.Key())
		if !ok {
			b.fail(w.Origin, "Pod", w.Key(), "status.podIP", "no free address left in %s", b.cfg.Placement.PodCIDR)
			return true
		}
		w.IPs = []netip.Addr{ip}
		return false
	})
	b.services = slices.DeleteFunc(b.services, func(s *Service) bool {
		if len(s.VIPs) > 0 || s.Headless {
			return false
		}
		ip, ok := b.allocate(b.cfg.Placement.ServiceCIDR, s.Key(), "Service "+s.Key())
		if !ok {
			b.fail(s.Origin, "Service", s.Key(), "spec.clusterIP", "no free address left in %s", b.cfg.Placement.ServiceCIDR)
			return true
		}
		s.VIPs = []netip.Addr{ip}
		return false
	})
}

// allocate picks a free address in an IPv4 prefix for key, skipping the first two addresses
// (network, gateway) and the broadcast address.
func (b *builder) allocate(prefix netip.Prefix, key, owner string) (netip.Addr, bool) {
	prefix = prefix.Masked()
	base := binary.BigEndian.Uint32(prefix.Addr().AsSlice())
	size := uint32(1) << (32 - prefix.Bits())
	usable := size - 3
	h := fnv.New32a()
	h.Write([]byte(key))
	start := h.Sum32() % usable
	for i := range usable {
		off := 2 + (start+i)%usable
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], base+off)
		ip := netip.AddrFrom4(a)
		if _, taken := b.addrs[ip]; !taken {
			b.addrs[ip] = owner
			return ip, true
		}
	}
	return netip.Addr{}, false
}
