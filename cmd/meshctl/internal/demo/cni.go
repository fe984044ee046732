package demo

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"

	"sigs.k8s.io/yaml"
)

// cni gives pods their addresses, as a cluster's CNI would: status.podIP in a /24 of loopback
// chosen at random per run. xdsserver --loopback would place them itself, but at addresses that
// depend only on their names, so two runs of the same example (this demo and an integration
// test, say) would try to listen on the same pod addresses.
type cni struct {
	net  string            // "127.a.b"
	wp   netip.Prefix      // 127.a.(b+1).0/24: where xdsserver places the pods nobody gives an address (waypoints)
	ips  map[string]string // "ns/name" → IP, kept across applies
	next int
}

// newCNI picks 127.a.b.0/24 with a in 11–95 and b even: outside the loopback placement's pod
// (127.10) and service (127.96) ranges, with the apps' private addresses (a+100) below the demo's
// own listeners (127.200–249). The next /24, 127.a.(b+1), is xdsserver's --pod-cidr, for the
// pods the demo does not place (waypoints, gateways): with the loopback placement's fixed
// range, two demos running at once (tests in parallel) would bind the same waypoint address.
func newCNI() *cni {
	a, b := 11+rand.IntN(85), 2+2*rand.IntN(124)
	return &cni{net: fmt.Sprintf("127.%d.%d", a, b), wp: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, byte(a), byte(b + 1), 0}), 24),
		ips: map[string]string{}, next: 2}
}

// place returns the YAML stream with status.podIP added to each Pod that has no status.
func (c *cni) place(data []byte) ([]byte, error) {
	docs := strings.Split(string(data), "\n---")
	for i, doc := range docs {
		var obj struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
			Status map[string]any `json:"status"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if obj.Kind != "Pod" || obj.Status != nil {
			continue
		}
		ns := obj.Metadata.Namespace
		if ns == "" {
			ns = "default"
		}
		key := ns + "/" + obj.Metadata.Name
		ip, ok := c.ips[key]
		if !ok {
			if c.next > 254 {
				return nil, fmt.Errorf("more than 253 pods")
			}
			ip = fmt.Sprintf("%s.%d", c.net, c.next)
			c.next++
			c.ips[key] = ip
		}
		docs[i] = strings.TrimRight(doc, "\n") + "\nstatus: {podIP: " + ip + "}  # given by meshctl demo, as a CNI would\n"
	}
	return []byte(strings.Join(docs, "\n---")), nil
}
