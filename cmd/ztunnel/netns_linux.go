package main

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/goambient/goambient/ztunnel/netns"
	"github.com/goambient/goambient/ztunnel/proxy"
)

// podNetns is the repeatable --pod-netns flag, `podIP=path`: namespace (in-pod) mode, the
// pod with that address is the network namespace at path (e.g. /var/run/netns/NAME), whose
// redirection rules are installed (netns.Rules), as istio-cni tells Istio's ztunnel.
type podNetns map[netip.Addr]string

func (m *podNetns) String() string {
	var s []string
	for ip, path := range *m {
		s = append(s, ip.String()+"="+path)
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}

func (m *podNetns) Set(v string) error {
	ip, path, ok := strings.Cut(v, "=")
	if !ok || path == "" {
		return fmt.Errorf("want podIP=/path/to/netns, got %q", v)
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return err
	}
	if *m == nil {
		*m = podNetns{}
	}
	(*m)[a] = path
	return nil
}

// open opens the namespaces; nil (not namespace mode) when the flag was not given. close
// releases them.
func (m podNetns) open() (pods proxy.PodNetworks, close func(), err error) {
	if len(m) == 0 {
		return nil, func() {}, nil
	}
	nss := nsByIP{}
	close = func() {
		for _, ns := range nss {
			ns.Close()
		}
	}
	for ip, path := range m {
		ns, err := netns.Open(path)
		if err != nil {
			close()
			return nil, nil, errors.New("--pod-netns " + ip.String() + ": " + err.Error())
		}
		nss[ip] = ns
	}
	return nss, close, nil
}

// nsByIP is proxy.PodNetworks over the namespaces of --pod-netns.
type nsByIP map[netip.Addr]*netns.NS

func (n nsByIP) For(ip netip.Addr) proxy.Netns {
	if ns := n[ip]; ns != nil {
		return ns
	}
	return nil
}
