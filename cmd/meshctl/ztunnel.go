package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/goambient/goambient/ztunnel/identity"
)

func init() { commands["ztunnel"] = runZtunnel }

const ztunnelUsage = `usage:
  meshctl ztunnel config [workloads|services|policies|certificates|all] --admin HOST:PORT [-o table|json]
      print what a running ztunnel holds, from its admin port's /config_dump (15000, loopback in
      its pod: reach a cluster's ztunnel with kubectl port-forward), as istioctl ztunnel-config
      does: the workloads, services and policies of the workload API it was sent, and the
      certificates it holds for the workloads of its node (chains and validity; no key is ever
      served). -o json prints the dump's part as it is.
Exit 0 printed, 1 failure, 2 usage error.`

func runZtunnel(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "config" {
		return ztunnelConfig(args[1:], stdout, stderr)
	}
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprintln(stdout, ztunnelUsage)
		return 0
	}
	fmt.Fprintln(stderr, ztunnelUsage)
	return 2
}

// ztunnelDump is a ztunnel's /config_dump: the workload API's resources (protojson) and the
// certificates (Istio's ztunnel shape).
type ztunnelDump struct {
	Workloads      []json.RawMessage    `json:"workloads"`
	Services       []json.RawMessage    `json:"services"`
	Authorizations []json.RawMessage    `json:"authorizations"`
	Certificates   []identity.CertsDump `json:"certificates"`
}

func ztunnelConfig(args []string, stdout, stderr io.Writer) int {
	what := "all"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		what, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("meshctl ztunnel config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "127.0.0.1:15000", "the ztunnel's admin listener, host:port")
	format := fs.String("o", "table", "output: table or json")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the dump")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usage := func(msg string) int {
		fmt.Fprintf(stderr, "meshctl ztunnel config: %s\n%s\n", msg, ztunnelUsage)
		return 2
	}
	if !slices.Contains([]string{"workloads", "services", "policies", "certificates", "all"}, what) {
		return usage(fmt.Sprintf("unknown part %q", what))
	}
	if fs.NArg() > 0 || (*format != "table" && *format != "json") {
		return usage("unexpected arguments, or -o not table or json")
	}
	c := &http.Client{Timeout: *timeout}
	resp, err := c.Get("http://" + *admin + "/config_dump")
	if err != nil {
		fmt.Fprintf(stderr, "meshctl ztunnel config: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "meshctl ztunnel config: %s/config_dump: %s %v\n", *admin, resp.Status, err)
		return 1
	}
	var d ztunnelDump
	if err := json.Unmarshal(body, &d); err != nil {
		fmt.Fprintf(stderr, "meshctl ztunnel config: %s/config_dump is not a ztunnel's dump: %v\n", *admin, err)
		return 1
	}
	if *format == "json" {
		var part any = d
		switch what {
		case "workloads":
			part = d.Workloads
		case "services":
			part = d.Services
		case "policies":
			part = d.Authorizations
		case "certificates":
			part = d.Certificates
		}
		js, _ := json.MarshalIndent(part, "", "  ")
		fmt.Fprintf(stdout, "%s\n", js)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	defer tw.Flush()
	sections := []string{what}
	if what == "all" {
		sections = []string{"workloads", "services", "policies", "certificates"}
	}
	for i, s := range sections {
		if i > 0 {
			fmt.Fprintln(tw)
		}
		var err error
		switch s {
		case "workloads":
			err = workloadTable(tw, d.Workloads)
		case "services":
			err = serviceTable(tw, d.Services, d.Workloads)
		case "policies":
			err = policyTable(tw, d.Authorizations)
		case "certificates":
			certificateTable(tw, d.Certificates, time.Now())
		}
		if err != nil {
			fmt.Fprintf(stderr, "meshctl ztunnel config: %v\n", err)
			return 1
		}
	}
	return 0
}

func ipString(b []byte) string {
	if ip, ok := netip.AddrFromSlice(b); ok {
		return ip.String()
	}
	return ""
}

func waypointString(g *workloadapi.GatewayAddress) string {
	switch {
	case g == nil:
		return "None"
	case g.GetHostname() != nil:
		return g.GetHostname().GetNamespace() + "/" + g.GetHostname().GetHostname()
	case g.GetAddress() != nil:
		return ipString(g.GetAddress().GetAddress())
	}
	return "None"
}

func workloadTable(w io.Writer, raw []json.RawMessage) error {
	fmt.Fprintln(w, "NAMESPACE\tPOD NAME\tADDRESS\tNODE\tWAYPOINT\tPROTOCOL")
	for _, r := range raw {
		var wl workloadapi.Workload
		if err := protojson.Unmarshal(r, &wl); err != nil {
			return fmt.Errorf("workload: %w", err)
		}
		var ips []string
		for _, a := range wl.GetAddresses() {
			ips = append(ips, ipString(a))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", wl.GetNamespace(), wl.GetName(), strings.Join(ips, ","), wl.GetNode(), waypointString(wl.GetWaypoint()), wl.GetTunnelProtocol())
	}
	return nil
}

func serviceTable(w io.Writer, raw, workloads []json.RawMessage) error {
	endpoints := map[string]int{} // namespace/hostname → workloads behind it
	for _, r := range workloads {
		var wl workloadapi.Workload
		if err := protojson.Unmarshal(r, &wl); err == nil {
			for k := range wl.GetServices() {
				endpoints[k]++
			}
		}
	}
	fmt.Fprintln(w, "NAMESPACE\tSERVICE NAME\tSERVICE VIP\tWAYPOINT\tENDPOINTS")
	for _, r := range raw {
		var s workloadapi.Service
		if err := protojson.Unmarshal(r, &s); err != nil {
			return fmt.Errorf("service: %w", err)
		}
		var vips []string
		for _, a := range s.GetAddresses() {
			vips = append(vips, ipString(a.GetAddress()))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", s.GetNamespace(), s.GetName(), strings.Join(vips, ","), waypointString(s.GetWaypoint()),
			endpoints[s.GetNamespace()+"/"+s.GetHostname()])
	}
	return nil
}

func policyTable(w io.Writer, raw []json.RawMessage) error {
	fmt.Fprintln(w, "NAMESPACE\tPOLICY NAME\tACTION\tSCOPE")
	for _, r := range raw {
		var a security.Authorization
		if err := protojson.Unmarshal(r, &a); err != nil {
			return fmt.Errorf("policy: %w", err)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", a.GetNamespace(), a.GetName(), a.GetAction(), a.GetScope())
	}
	return nil
}

// certificateTable is istioctl ztunnel-config certificates' table: one line per certificate
// of each identity's chain, then its roots.
func certificateTable(w io.Writer, certs []identity.CertsDump, now time.Time) {
	fmt.Fprintln(w, "CERTIFICATE NAME\tTYPE\tSTATUS\tVALID CERT\tSERIAL NUMBER\tNOT AFTER\tNOT BEFORE")
	line := func(name, typ string, state identity.CertState, c identity.CertDump) {
		valid := false
		from, err1 := time.Parse(time.RFC3339, c.ValidFrom)
		to, err2 := time.Parse(time.RFC3339, c.ExpirationTime)
		if err1 == nil && err2 == nil {
			valid = !now.Before(from) && now.Before(to)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\t%s\t%s\n", name, typ, state, valid, c.SerialNumber, c.ExpirationTime, c.ValidFrom)
	}
	for _, c := range certs {
		for i, cert := range c.CertChain {
			typ := "Leaf"
			if i > 0 {
				typ = "Intermediate"
			}
			line(c.Identity, typ, c.State, cert)
		}
		if len(c.CertChain) == 0 {
			fmt.Fprintf(w, "%s\t-\t%s\tfalse\t-\t-\t-\n", c.Identity, c.State)
		}
		for _, cert := range c.RootCerts {
			line(c.Identity, "Root", c.State, cert)
		}
	}
}
