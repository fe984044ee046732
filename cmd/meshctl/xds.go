package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"sigs.k8s.io/yaml"

	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/goambient/goambient/filters/authzconfig"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/source/files"
	"github.com/goambient/goambient/xdsserver/waypointxds"
	"github.com/goambient/goambient/xdsserver/wds"
)

func init() { commands["xds"] = runXDS }

const xdsUsage = `usage:
  meshctl xds dump --node NODE --config-dir DIR [--config-dir DIR2] [--loopback] [--type T] [-o yaml|json]
  meshctl xds dump --node NODE --xds-address HOST:PORT [--xds-root ROOT --xds-token-file TOKEN] [--type T] [-o yaml|json]
      print what xdsserver sends the node: with --config-dir, what it would send, from the same
      model and translators run here on the folders; with --xds-address, what a running
      xdsserver does send, asked over delta ADS as that node (its plaintext 15010, or its TLS
      15012 with the mesh root and a bearer token: a waypoint's SDS secrets are sent there only,
      to that waypoint's token; a cluster's xdsserver is reached by kubectl port-forward).
      For a ztunnel (NODE is its node name or its node id ztunnel~...), Istio's
      workload API (istio.workload.Address, istio.security.Authorization); for a waypoint
      (NODE is its Envoy node id waypoint~<ip>~<pod>.<ns>~<ns>.svc.cluster.local), its Envoy
      xDS (clusters, endpoints, listeners, routes, extension configs, secrets).
      --type keeps one type: a type URL, its message name (Address, Authorization, Listener,
      ...) or cds, eds, lds, rds, ecds, sds.
Exit 0 printed, 1 failure, 2 usage error.`

func runXDS(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "dump":
			return xdsDump(args[1:], stdout, stderr)
		case "-h", "-help", "--help", "help":
			fmt.Fprintln(stdout, xdsUsage)
			return 0
		}
	}
	fmt.Fprintln(stderr, xdsUsage)
	return 2
}

// dumpedResource is one resource as the dump prints it: its xDS name and type URL, its
// message as protojson (field names as in the .proto), and for a workload or service its
// addresses decoded (the message carries them as bytes, which JSON shows in base64).
type dumpedResource struct {
	Type      string          `json:"type"`
	Name      string          `json:"name"`
	Addresses []string        `json:"addresses,omitempty"`
	Resource  json.RawMessage `json:"resource"`
}

type dump struct {
	Node      string           `json:"node"`
	Waypoint  string           `json:"waypoint,omitempty"` // namespace/name, for a waypoint node
	Resources []dumpedResource `json:"resources"`
}

// xdsTypeAliases are the short names --type accepts besides type URLs and message names.
var xdsTypeAliases = map[string]string{
	"cds": "envoy.config.cluster.v3.Cluster", "eds": "envoy.config.endpoint.v3.ClusterLoadAssignment",
	"lds": "envoy.config.listener.v3.Listener", "rds": "envoy.config.route.v3.RouteConfiguration",
	"ecds": "envoy.config.core.v3.TypedExtensionConfig", "sds": "envoy.extensions.transport_sockets.tls.v3.Secret",
	"wds": "istio.workload.Address", "address": "istio.workload.Address", "authorization": "istio.security.Authorization",
}

func xdsDump(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("meshctl xds dump", flag.ContinueOnError)
	fs.SetOutput(stderr)
	node := fs.String("node", "", "ztunnel node name or node id, or waypoint node id (required)")
	var dirs listFlag
	fs.Var(&dirs, "config-dir", "folder (read recursively) or file of mesh YAML, as xdsserver's (repeatable; required)")
	loopback := fs.Bool("loopback", false, "place addresses as xdsserver --loopback does")
	waypointHostname := fs.Bool("waypoint-hostname", false, "as xdsserver --waypoint-hostname")
	typ := fs.String("type", "", "only this type (type URL, message name, or cds/eds/lds/rds/ecds/sds)")
	format := fs.String("o", "yaml", "output format: yaml or json")
	var live liveSource
	fs.StringVar(&live.address, "xds-address", "", "a running xdsserver's ADS, host:port (instead of --config-dir)")
	fs.StringVar(&live.root, "xds-root", "", "with --xds-address: PEM root of its TLS listener (turns TLS on)")
	fs.StringVar(&live.tokenFile, "xds-token-file", "", "with --xds-root: bearer token file sent on the stream")
	fs.DurationVar(&live.timeout, "timeout", 15*time.Second, "with --xds-address: how long to wait for every type's answer")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usage := func(msg string) int {
		fmt.Fprintf(stderr, "meshctl xds dump: %s\n%s\n", msg, xdsUsage)
		return 2
	}
	switch {
	case fs.NArg() > 0:
		return usage(fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	case *node == "":
		return usage("--node is required")
	case (len(dirs) == 0) == (live.address == ""):
		return usage("exactly one of --config-dir and --xds-address is required")
	case live.tokenFile != "" && live.root == "":
		return usage("--xds-token-file needs --xds-root (a token never goes in clear)")
	case *format != "yaml" && *format != "json":
		return usage("-o must be yaml or json")
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); err != nil {
			fmt.Fprintf(stderr, "meshctl xds dump: --config-dir: %v\n", err)
			return 1
		}
	}
	if live.address != "" {
		types := []string{wds.AddressType, wds.AuthorizationType}
		if strings.HasPrefix(*node, "waypoint~") {
			types = waypointxds.Types
			if live.root == "" { // secrets are sent on the TLS listener only
				types = slices.DeleteFunc(slices.Clone(types), func(t string) bool { return strings.HasSuffix(t, ".Secret") })
			}
		}
		if *typ != "" {
			want, ok := matchType(*typ, types)
			if !ok {
				return usage(fmt.Sprintf("--type %q: this node gets none of that type (it gets %s)", *typ, strings.Join(types, ", ")))
			}
			types = []string{want}
		}
		byType, err := live.fetch(*node, types)
		if err != nil {
			fmt.Fprintf(stderr, "meshctl xds dump: %v\n", err)
			return 1
		}
		out := dump{Node: *node}
		if strings.HasPrefix(*node, "waypoint~") {
			// The waypoint the server mapped the node to names its filter's ECDS resource.
			for name := range byType[resource.ExtensionConfigType] {
				if k, ok := strings.CutPrefix(name, authzconfig.PluginName+"/"); ok {
					out.Waypoint = k
				}
			}
			if total := func() (n int) {
				for _, set := range byType {
					n += len(set)
				}
				return n
			}(); total == 0 {
				fmt.Fprintf(stderr, "meshctl xds dump: %s sent node %s nothing: it knows no waypoint of that node id (a pod of a waypoint, or the Gateway's name)\n", live.address, *node)
				return 1
			}
		}
		return printDump(out, byType, types, *format, stdout, stderr)
	}
	cfg := model.DefaultConfig()
	if *loopback {
		cfg.Placement = model.LoopbackPlacement
	}
	mesh, err := files.New(files.Options{Paths: dirs, Model: cfg}).Load()
	if err != nil {
		fmt.Fprintf(stderr, "meshctl xds dump: %v\n", err)
		return 1
	}
	for _, e := range mesh.Errors {
		fmt.Fprintf(stderr, "config error (object left out): %v\n", e)
	}

	out := dump{Node: *node}
	var byType map[string]map[string]proto.Message
	var types []string
	if strings.HasPrefix(*node, "waypoint~") {
		r := waypointxds.Translate(mesh, waypointxds.Options{})
		for _, w := range r.Warnings {
			fmt.Fprintf(stderr, "translation warning: %v\n", w)
		}
		key, err := r.WaypointForNode(*node)
		if err != nil {
			fmt.Fprintf(stderr, "meshctl xds dump: %v\n", err)
			return 1
		}
		out.Waypoint = key
		byType, types = r.Waypoints[key].ByType(), waypointxds.Types
	} else {
		r := wds.Translate(mesh, wds.Options{WaypointHostname: *waypointHostname})
		for _, w := range r.Warnings {
			fmt.Fprintf(stderr, "translation warning: %v\n", w)
		}
		// Every ztunnel receives the whole mesh, as from istiod without on-demand discovery.
		if !strings.HasPrefix(*node, "ztunnel~") && !slices.Contains(mesh.Nodes(), *node) {
			fmt.Fprintf(stderr, "note: no pod of the mesh runs on node %q (known: %s); a ztunnel there gets the same resources\n",
				*node, strings.Join(mesh.Nodes(), ", "))
		}
		byType, types = r.ByType(), []string{wds.AddressType, wds.AuthorizationType}
	}
	if *typ != "" {
		want, ok := matchType(*typ, types)
		if !ok {
			return usage(fmt.Sprintf("--type %q: this node gets none of that type (it gets %s)", *typ, strings.Join(types, ", ")))
		}
		types = []string{want}
	}
	return printDump(out, byType, types, *format, stdout, stderr)
}

// printDump prints the resources of types, sorted by name, as YAML or JSON.
func printDump(out dump, byType map[string]map[string]proto.Message, types []string, format string, stdout, stderr io.Writer) int {
	out.Resources = []dumpedResource{}
	for _, t := range types {
		for _, name := range slices.Sorted(maps.Keys(byType[t])) {
			msg := byType[t][name]
			js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(msg)
			if err != nil {
				fmt.Fprintf(stderr, "meshctl xds dump: %s %s: %v\n", t, name, err)
				return 1
			}
			out.Resources = append(out.Resources, dumpedResource{Type: t, Name: name, Addresses: addressesOf(msg), Resource: js})
		}
	}
	js, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		fmt.Fprintf(stderr, "meshctl xds dump: %v\n", err)
		return 1
	}
	if format == "yaml" {
		if js, err = yaml.JSONToYAML(js); err != nil {
			fmt.Fprintf(stderr, "meshctl xds dump: %v\n", err)
			return 1
		}
		stdout.Write(js)
		return 0
	}
	fmt.Fprintf(stdout, "%s\n", js)
	return 0
}

// matchType finds the type URL among types that s names.
func matchType(s string, types []string) (string, bool) {
	if a, ok := xdsTypeAliases[strings.ToLower(s)]; ok {
		s = a
	}
	for _, t := range types {
		full := strings.TrimPrefix(t, "type.googleapis.com/")
		short := full[strings.LastIndex(full, ".")+1:]
		if s == t || s == full || strings.EqualFold(s, short) {
			return t, true
		}
	}
	return "", false
}

// addressesOf decodes the addresses of a workload or service.
func addressesOf(m proto.Message) []string {
	a, ok := m.(*workloadapi.Address)
	if !ok {
		return nil
	}
	var raw [][]byte
	if w := a.GetWorkload(); w != nil {
		raw = w.GetAddresses()
	}
	for _, na := range a.GetService().GetAddresses() {
		raw = append(raw, na.GetAddress())
	}
	var out []string
	for _, b := range raw {
		if ip, ok := netip.AddrFromSlice(b); ok {
			out = append(out, ip.String())
		}
	}
	return out
}
