package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
)

// packetNetns is a Netns that also opens UDP sockets (ztunnel/netns.NS).
type packetNetns interface {
	ListenPacket(ctx context.Context, network, addr string) (net.PacketConn, error)
}

// openPodDNS opens the pod's DNS proxy sockets on loop:15053 (UDP and TCP) inside its
// namespace and serves Config.DNS on them, its upstream queries dialled from the namespace
// (under p.mu). Without Config.DNS it does nothing.
func (p *Proxy) openPodDNS(key string, pod *inpodPod, loop netip.Addr) error {
	if p.cfg.DNS == nil {
		return nil
	}
	pn, ok := pod.ns.(packetNetns)
	if !ok {
		return fmt.Errorf("the pod's namespace cannot open UDP sockets for the DNS proxy")
	}
	addr := netip.AddrPortFrom(loop, PortDNS).String()
	pc, err := pn.ListenPacket(context.Background(), "udp", addr)
	if err != nil {
		return fmt.Errorf("listen udp %s in the pod's namespace: %w", addr, err)
	}
	ln, err := pod.ns.Listen(context.Background(), "tcp", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("listen tcp %s in the pod's namespace: %w", addr, err)
	}
	k := "pod/" + key + "/dns"
	p.listeners[k] = ln
	pod.keys = append(pod.keys, k)
	ctx, cancel := context.WithCancel(context.Background())
	pod.stopDNS = cancel
	go p.cfg.DNS.ServeDialing(ctx, pc, ln, pod.ns.DialContext)
	p.log.Info("listener established", "address", addr, "component", "dns_proxy", "scope", "inpod", "pod", key)
	return nil
}
