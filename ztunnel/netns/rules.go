package netns

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
)

// Rules is the nat table of a pod's namespace in iptables-restore format (applied with
// --noflush), the TCP part of istio-cni's in-pod rules:
//
//   - PREROUTING: TCP not to 127.0.0.1, not to 15008 and not marked → REDIRECT 15006
//     (inbound plaintext; HBONE on 15008 reaches ztunnel's listener directly);
//   - OUTPUT: ztunnel's own sockets (marked Mark) and the pod's calls to itself over lo pass;
//     other TCP not to 127.0.0.1 → REDIRECT 15001 (outbound capture).
//
// Istio also restores the mark through a connmark and exempts its node probes; neither is needed
// here, where ztunnel marks every socket it opens in the pod.
func Rules() string {
	mark := fmt.Sprintf("0x%x/0x%x", Mark, MarkMask)
	var b bytes.Buffer
	fmt.Fprintf(&b, "*nat\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n")
	fmt.Fprintf(&b, "-A PREROUTING -j ISTIO_PRERT\n-A OUTPUT -j ISTIO_OUTPUT\n")
	fmt.Fprintf(&b, "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport %d -m mark ! --mark %s -j REDIRECT --to-ports %d\n",
		PortInboundHBONE, mark, PortInboundPlaintext)
	fmt.Fprintf(&b, "-A ISTIO_OUTPUT -p tcp -m mark --mark %s -j ACCEPT\n", mark)
	fmt.Fprintf(&b, "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT\n")
	fmt.Fprintf(&b, "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark %s -j REDIRECT --to-ports %d\n",
		mark, PortOutbound)
	b.WriteString("COMMIT\n")
	return b.String()
}

// Apply installs Rules in the named namespace (/var/run/netns/name) with
// `ip netns exec name iptables-restore --noflush`, as istio-cni's node agent does when a pod
// joins the mesh. It needs root and the ip and iptables commands.
func Apply(ctx context.Context, name string) error {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", name, "iptables-restore", "--noflush")
	cmd.Stdin = bytes.NewBufferString(Rules())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("netns: iptables-restore in %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}
