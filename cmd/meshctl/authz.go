package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/goambient/goambient/policies"
)

func init() { commands["authz"] = runAuthz }

func runAuthz(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "check":
			return authzCheck(args[1:], stdout, stderr)
		case "lint":
			return authzLint(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintln(stderr, "usage: meshctl authz check|lint -f FILE|DIR ...")
	return 2
}

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// authzCheck decides one request against the policies of a file or folder: exit 0 allowed, 1 denied.
func authzCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("meshctl authz check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("f", "", "policy file or folder (required)")
	root := fs.String("root-namespace", policies.DefaultRootNamespace, "the mesh's root namespace")
	ns := fs.String("namespace", "", "destination workload's namespace (or the waypoint's, with --waypoint)")
	labels := fs.String("workload-labels", "", "destination workload's labels, k=v,k=v")
	waypoint := fs.String("waypoint", "", "evaluate at this waypoint Gateway (ns/name, or name in --namespace)")
	class := fs.String("gateway-class", "istio-waypoint", "the waypoint Gateway's class")
	service := fs.String("service", "", "the Service the request is addressed to, at a waypoint (ns/name or name)")
	serviceEntry := fs.String("service-entry", "", "the ServiceEntry the request is addressed to, at a waypoint (ns/name or name); a policy's Service targetRef does not attach to it")
	principal := fs.String("source-principal", "", "peer identity, e.g. cluster.local/ns/foo/sa/bar (spiffe:// optional); empty for plaintext")
	srcIP := fs.String("source-ip", "", "peer address")
	remoteIP := fs.String("remote-ip", "", "original client address (X-Forwarded-For)")
	dstIP := fs.String("destination-ip", "", "destination address")
	port := fs.Uint("port", 0, "destination port")
	method := fs.String("method", "", "HTTP method")
	path := fs.String("path", "", "HTTP path (normalised as Istio's BASE)")
	host := fs.String("host", "", "HTTP host (authority)")
	sni := fs.String("sni", "", "TLS server name")
	var headers, claims listFlag
	fs.Var(&headers, "header", "request header k=v (repeatable)")
	fs.Var(&claims, "claim", "JWT claim k=v (repeatable; repeat a key for a list, e.g. aud or azp); with --jwt-issuer")
	issuer := fs.String("jwt-issuer", "", "issuer of the request's validated JWT")
	subject := fs.String("jwt-subject", "", "subject of the request's validated JWT")
	explain := fs.Bool("explain", false, "print every policy considered and why it matched or not")
	asJSON := fs.Bool("json", false, "print the decision as JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	usage := func(msg string) int {
		fmt.Fprintf(stderr, "meshctl authz check: %s\n", msg)
		return 2
	}
	if *file == "" {
		return usage("-f is required")
	}
	if *port > 65535 {
		return usage("--port must be from 0 to 65535")
	}
	objs, errs := policies.LoadPath(*file)
	for _, e := range errs {
		fmt.Fprintf(stderr, "skipped: %v\n", e)
	}
	req := policies.Request{Principal: strings.TrimPrefix(*principal, "spiffe://"), Method: *method, Host: *host, DestPort: uint16(*port), SNI: *sni}
	var err error
	if req.Path, err = policies.NormalizePath(*path); err != nil && *path != "" {
		return denyBadRequest(stdout, err)
	}
	if *path == "" {
		req.Path = ""
	}
	for _, a := range []struct {
		flag string
		in   string
		out  *netip.Addr
	}{{"--source-ip", *srcIP, &req.SourceIP}, {"--remote-ip", *remoteIP, &req.RemoteIP}, {"--destination-ip", *dstIP, &req.DestIP}} {
		if a.in == "" {
			continue
		}
		if *a.out, err = netip.ParseAddr(a.in); err != nil {
			return usage(fmt.Sprintf("%s: %q is not an IP address", a.flag, a.in))
		}
	}
	if req.Headers, err = keyValues(headers, "--header", true); err != nil {
		return usage(err.Error())
	}
	if *issuer != "" || *subject != "" || len(claims) > 0 {
		req.Auth = policies.RequestAuth{Issuer: *issuer, Subject: *subject, Claims: map[string]any{}}
		for _, c := range claims {
			k, v, ok := strings.Cut(c, "=")
			if !ok {
				return usage(fmt.Sprintf("--claim %q: want k=v", c))
			}
			switch prev := req.Auth.Claims[k].(type) {
			case nil:
				req.Auth.Claims[k] = v
			case string:
				req.Auth.Claims[k] = []any{prev, v}
			case []any:
				req.Auth.Claims[k] = append(prev, v)
			}
		}
	}
	if *waypoint != "" {
		gwNS, gw := splitRef(*waypoint, *ns)
		if gwNS == "" {
			return usage("--waypoint needs ns/name, or --namespace")
		}
		req.Target = policies.Target{Namespace: gwNS, Waypoint: true, Gateway: gw, GatewayClass: *class}
		switch {
		case *service != "" && *serviceEntry != "":
			return usage("--service and --service-entry: give one")
		case *service != "":
			req.Target.ServiceNamespace, req.Target.Service = splitRef(*service, gwNS)
		case *serviceEntry != "":
			req.Target.ServiceNamespace, req.Target.Service = splitRef(*serviceEntry, gwNS)
			req.Target.ServiceKind = policies.KindServiceEntry
		}
	} else {
		if *ns == "" {
			return usage("--namespace (the destination workload's) or --waypoint is required")
		}
		l, err := keyValues(splitComma(*labels), "--workload-labels", false)
		if err != nil {
			return usage(err.Error())
		}
		req.Target = policies.Target{Namespace: *ns, Labels: l}
	}

	engine := policies.Compile(objs.AuthorizationPolicies, policies.Options{RootNamespace: *root})
	d := engine.Decide(&req)
	if *asJSON {
		out := map[string]any{"decision": d}
		if *explain {
			out["explain"] = engine.Explain(&req)
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	} else {
		printDecision(stdout, d)
		if *explain {
			printExplain(stdout, engine.Explain(&req))
		}
	}
	if d.Allowed {
		return 0
	}
	return 1
}

func denyBadRequest(stdout io.Writer, err error) int {
	fmt.Fprintf(stdout, "DENY (400 bad request): %v\n", err)
	return 1
}

func printDecision(w io.Writer, d policies.Decision) {
	verdict := "ALLOW"
	if !d.Allowed {
		verdict = "DENY"
	}
	fmt.Fprintf(w, "%s  reason=%s", verdict, d.Reason)
	if d.Policy != "" {
		fmt.Fprintf(w, " policy=%s rule=%d", d.Policy, d.Rule)
	}
	fmt.Fprintln(w)
	if d.Details != "" {
		fmt.Fprintf(w, "response_code_details: %s\n", d.Details)
	}
	if !d.Allowed && d.Reason != policies.ReasonBadRequest {
		fmt.Fprintln(w, "at a waypoint: 403 RBAC: access denied; at ztunnel: the connection is refused (CONNECT answered 401)")
	}
	if d.CustomProvider != "" {
		fmt.Fprintf(w, "CUSTOM: ask provider %q (policy %s rule %d); it may still deny\n", d.CustomProvider, d.Custom.Policy, d.Custom.Rule)
	}
	for _, a := range d.Audit {
		fmt.Fprintf(w, "AUDIT: policy %s rule %d\n", a.Policy, a.Rule)
	}
	if d.DryRun.Applied {
		v := "allow"
		if !d.DryRun.Allowed {
			v = "deny"
		}
		fmt.Fprintf(w, "dry-run policies would %s", v)
		if d.DryRun.Policy != "" {
			fmt.Fprintf(w, " (policy %s rule %d)", d.DryRun.Policy, d.DryRun.Rule)
		}
		fmt.Fprintln(w)
	}
}

func printExplain(w io.Writer, xs []policies.Explanation) {
	fmt.Fprintln(w, "\npolicies considered:")
	for _, x := range xs {
		dry := ""
		if x.DryRun {
			dry = " (dry-run)"
		}
		state := "skipped"
		if x.Applies {
			state = "applies"
		}
		fmt.Fprintf(w, "  %s %s%s: %s: %s\n", x.Action, x.Policy, dry, state, x.Why)
		for i, r := range x.Rules {
			fmt.Fprintf(w, "    rule[%d]: %s\n", i, r)
		}
	}
}

// authzLint prints validation errors and ztunnel's warnings; it exits 1 when there are errors.
func authzLint(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("meshctl authz lint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("f", "", "policy file or folder (required)")
	root := fs.String("root-namespace", policies.DefaultRootNamespace, "the mesh's root namespace")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *file == "" {
		fmt.Fprintln(stderr, "meshctl authz lint: -f is required")
		return 2
	}
	objs, errs := policies.LoadPath(*file)
	for _, e := range errs {
		fmt.Fprintf(stdout, "error: %v\n", e)
	}
	z := policies.ToZtunnel(objs, policies.Options{RootNamespace: *root})
	warnings := append(policies.WaypointSelectorRemarks(objs), z.Warnings...)
	for _, w := range warnings {
		fmt.Fprintf(stdout, "warning: %v\n", w)
	}
	fmt.Fprintf(stdout, "%d AuthorizationPolicy and %d PeerAuthentication valid, %d errors, %d warnings\n",
		len(objs.AuthorizationPolicies), len(objs.PeerAuthentications), len(errs), len(warnings))
	if len(errs) > 0 {
		return 1
	}
	return 0
}

func splitRef(ref, defaultNS string) (ns, name string) {
	if n, nm, ok := strings.Cut(ref, "/"); ok {
		return n, nm
	}
	return defaultNS, ref
}

func splitComma(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func keyValues(kvs []string, flagName string, lowerKeys bool) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, errors.New(flagName + " " + strconv.Quote(kv) + ": want k=v")
		}
		if lowerKeys {
			k = strings.ToLower(k)
			if prev, dup := m[k]; dup {
				v = prev + "," + v
			}
		}
		m[k] = v
	}
	return m, nil
}
