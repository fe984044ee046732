package netns

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
)

// PortDNS is Istio's in-pod DNS capture port (DNSCapturePort): ztunnel's DNS proxy listens
// on 127.0.0.1:15053 inside the pod.
const PortDNS = 15053

// DNSRules is the nat part of istio-cni's DNS capture (cni/pkg/iptables, redirectDNS), in
// iptables-restore format to apply after Rules with --noflush: the pod's DNS queries that are
// not ztunnel's own (marked Mark) go to the DNS proxy — UDP to port 53 not leaving by lo, TCP
// to port 53 not to 127.0.0.1. Istio also puts the proxy's upstream queries in a conntrack
// zone of their own, against port collisions with the pod's; that is not done here.
func DNSRules() string {
	mark := fmt.Sprintf("0x%x/0x%x", Mark, MarkMask)
	var b bytes.Buffer
	b.WriteString("*nat\n")
	fmt.Fprintf(&b, "-I ISTIO_OUTPUT 1 ! -o lo -p udp -m mark ! --mark %s -m udp --dport 53 -j REDIRECT --to-ports %d\n", mark, PortDNS)
	fmt.Fprintf(&b, "-I ISTIO_OUTPUT 2 ! -d 127.0.0.1/32 -p tcp --dport 53 -m mark ! --mark %s -j REDIRECT --to-ports %d\n", mark, PortDNS)
	b.WriteString("COMMIT\n")
	return b.String()
}

// ApplyDNS installs DNSRules in the named namespace, after Apply, as istio-cni's node agent
// does when DNS capture is on.
func ApplyDNS(ctx context.Context, name string) error {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", name, "iptables-restore", "--noflush")
	cmd.Stdin = bytes.NewBufferString(DNSRules())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("netns: iptables-restore of the DNS rules in %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}
