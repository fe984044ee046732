package model

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/goambient/goambient/policies"
)

// The checks of this file are istiod's validation webhook's (pkg/config/validation) for
// VirtualService and DestinationRule, each problem reported with its field path. A webhook
// warning is a Mesh warning; an error leaves the object out.

var (
	headerNameToken  = regexp.MustCompile("^[!#$%&'*+\\-.^_`|~0-9a-zA-Z]+$")
	headerValueChars = regexp.MustCompile("^[^\u0000-\u0008\u000A-\u001F\u007F]*$")
	// Istio's label formats (pkg/config/labels): DNS labels may have capitals there.
	istioLabel        = regexp.MustCompile(`^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$`)
	wildcardDNSLabel  = regexp.MustCompile(`^(\*|(\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)$`)
	labelKey          = regexp.MustCompile(`^([a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)*/)?((?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$`)
	labelValue        = regexp.MustCompile(`^((?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
	envoyFormatterVar = regexp.MustCompile(`%[A-Z_0-9]+(\([^()%]*\))?(:[0-9]+)?%`)
)

// pseudoHeaders are the HTTP/2 pseudo headers a header match may name.
var pseudoHeaders = []string{":method", ":scheme", ":authority", ":path", ":status"}

// retryOnPolicies are the retryOn tokens Istio accepts besides HTTP status codes.
var retryOnPolicies = []string{
	"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx", "refused-stream",
	"retriable-status-codes", "retriable-headers", "envoy-ratelimited", "http3-post-connect-failure",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

// grpcStatusCodes are the gRPC status names a fault abort may use, with their codes.
var grpcStatusCodes = map[string]uint32{
	"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
	"ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
	"OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

// GRPCStatusCode returns the code of a gRPC status name (fault.abort.grpcStatus).
func GRPCStatusCode(name string) (uint32, bool) {
	c, ok := grpcStatusCodes[name]
	return c, ok
}

// checker collects the errors and warnings of one object.
type checker struct {
	origin       policies.Origin
	kind, object string
	errs, warns  []error
}

func (c *checker) fail(field, format string, args ...any) {
	c.errs = append(c.errs, &policies.Error{Origin: c.origin, Kind: c.kind, Object: c.object, Field: field, Reason: fmt.Sprintf(format, args...)})
}

func (c *checker) warn(field, format string, args ...any) {
	c.warns = append(c.warns, &policies.Error{Origin: c.origin, Kind: c.kind, Object: c.object, Field: field, Reason: fmt.Sprintf(format, args...)})
}

func idx(field string, i int) string { return field + "[" + strconv.Itoa(i) + "]" }

func key(field, k string) string { return field + "[" + k + "]" }

// validHeaderName is an HTTP token.
func validHeaderName(name string) bool { return headerNameToken.MatchString(name) }

// duration checks an Istio duration: at least 1ms, whole milliseconds.
func (c *checker) duration(field string, d *durationpb.Duration) {
	if d == nil {
		return
	}
	if err := d.CheckValid(); err != nil {
		c.fail(field, "%v", err)
		return
	}
	v := d.AsDuration()
	switch {
	case v < time.Millisecond:
		c.fail(field, "duration must be greater than 1ms")
	case v%time.Millisecond != 0:
		c.fail(field, "only durations to ms precision are supported")
	}
}

// wildcardDomain is Istio's ValidateWildcardDomain: a DNS name whose first label may be a
// wildcard ("*" or "*-foo"); the last label may not be all digits.
func wildcardDomain(d string) error {
	if d == "" {
		return fmt.Errorf("empty domain name not allowed")
	}
	if len(d) > 255 {
		return fmt.Errorf("domain name %q too long (max 255)", d)
	}
	first, rest, hasRest := strings.Cut(d, ".")
	if len(first) > 63 || !wildcardDNSLabel.MatchString(first) {
		return fmt.Errorf("domain name %q invalid (label %q invalid)", d, first)
	}
	if !hasRest {
		return nil
	}
	parts := strings.Split(rest, ".")
	if _, err := strconv.Atoi(parts[len(parts)-1]); err == nil {
		return fmt.Errorf("domain name %q invalid (top level domain %q cannot be all-numeric)", d, parts[len(parts)-1])
	}
	for i, l := range parts {
		if i == len(parts)-1 && l == "" {
			return nil // a trailing dot
		}
		if !isIstioLabel(l) {
			return fmt.Errorf("domain name %q invalid (label %q invalid)", d, l)
		}
	}
	return nil
}

// isIstioLabel is Istio's IsDNS1123Label (capitals allowed).
func isIstioLabel(s string) bool { return len(s) <= 63 && istioLabel.MatchString(s) }

func isIP(s string) bool { _, err := netip.ParseAddr(s); return err == nil }

// regex checks an RE2 expression as Istio does (Go's regexp is RE2's syntax; Envoy's
// re2.max_program_size is approximated by a length of 1024).
func (c *checker) regex(field, re string) {
	if re == "" {
		c.fail(field, "regex string match should not be empty")
		return
	}
	if len(re) > 1024 {
		c.fail(field, "regex is too large, max length allowed is 1024")
		return
	}
	if _, err := regexp.Compile(re); err != nil {
		c.fail(field, "%v; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)", err)
	}
}

// stringMatch checks a StringMatch: a prefix may not be empty, a regex must compile. An empty
// uri prefix is allowed (Envoy's route prefix may be empty).
func (c *checker) stringMatch(field string, m *networking.StringMatch, emptyPrefixOK bool) {
	switch t := m.GetMatchType().(type) {
	case *networking.StringMatch_Prefix:
		if t.Prefix == "" && !emptyPrefixOK {
			c.fail(field+".prefix", "prefix string match should not be empty")
		}
	case *networking.StringMatch_Regex:
		c.regex(field+".regex", t.Regex)
	}
}

// headerValue checks a header value: no control characters, and '%' only in Envoy's
// %VARIABLE% formatters or as "%%".
func (c *checker) headerValue(field, v string) {
	if !headerValueChars.MatchString(v) {
		c.fail(field, "header value configuration %s is invalid", v)
		return
	}
	rest := envoyFormatterVar.ReplaceAllString(strings.ReplaceAll(v, "%%", ""), "")
	if strings.Contains(rest, "%") {
		c.fail(field, "header value configuration: %q: a '%%' must start an Envoy %%VARIABLE%% or be doubled", v)
		return
	}
	for _, m := range envoyFormatterVar.FindAllString(strings.ReplaceAll(v, "%%", ""), -1) {
		if !slices.Contains(SupportedHeaderFormatters, strings.TrimSuffix(strings.SplitN(m[1:], "(", 2)[0], "%")) {
			c.warn(field, "%s is expanded by Envoy but written literally by the embedded waypoint, which expands only %s", m, strings.Join(SupportedHeaderFormatters, ", "))
		}
	}
}

// SupportedHeaderFormatters are the Envoy %VARIABLE%s both waypoints expand in header values.
var SupportedHeaderFormatters = []string{
	"DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_LOCAL_ADDRESS",
	"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_PEER_URI_SAN", "HOSTNAME", "PROTOCOL", "REQUEST_ID",
}

// headers checks a Headers block (header operations of a rule or a destination).
func (c *checker) headers(field string, h *networking.Headers) {
	if h == nil {
		return
	}
	for _, op := range []struct {
		field    string
		set, add map[string]string
		remove   []string
		request  bool
	}{
		{field + ".request", h.GetRequest().GetSet(), h.GetRequest().GetAdd(), h.GetRequest().GetRemove(), true},
		{field + ".response", h.GetResponse().GetSet(), h.GetResponse().GetAdd(), h.GetResponse().GetRemove(), false},
	} {
		for _, m := range []struct {
			name string
			kv   map[string]string
		}{{"set", op.set}, {"add", op.add}} {
			for _, k := range sortedKeys(m.kv) {
				f := key(op.field+"."+m.name, k)
				switch {
				case k == "":
					c.fail(f, "header name cannot be empty")
				case op.request && isInternalHeader(k) && !isAuthorityHeader(k):
					c.fail(f, "invalid header %q: header cannot have \":\" prefix", k)
				case !op.request && strings.EqualFold(k, "host"):
					c.fail(f, "invalid header %q: cannot set Host header", k)
				case !op.request && isInternalHeader(k):
					c.fail(f, "invalid header %q: header cannot have \":\" prefix", k)
				}
				c.headerValue(f, m.kv[k])
			}
		}
		for i, k := range op.remove {
			f := idx(op.field+".remove", i)
			switch {
			case k == "":
				c.fail(f, "header name cannot be empty")
			case strings.EqualFold(k, "host"):
				c.fail(f, "invalid header %q: cannot set Host header", k)
			case isInternalHeader(k):
				c.fail(f, "invalid header %q: header cannot have \":\" prefix", k)
			}
		}
	}
}

func isInternalHeader(k string) bool {
	return strings.HasPrefix(k, ":") || strings.EqualFold(k, "host")
}

func isAuthorityHeader(k string) bool {
	return strings.EqualFold(k, ":authority") || strings.EqualFold(k, "host")
}

// percent checks a fault or mirror percentage.
func (c *checker) percent(field string, p *networking.Percent) {
	if p == nil {
		return
	}
	if v := p.GetValue(); v < 0 || v > 100 || (v > 0 && v < 0.0001) {
		c.fail(field+".value", "percentage %v is neither 0.0, nor in range [0.0001, 100.0]", v)
	}
}

// destination checks a Destination (of a route, a mirror).
func (c *checker) destination(field string, d *networking.Destination) {
	if d == nil {
		return
	}
	if d.GetHost() == "*" {
		c.fail(field+".host", "invalid destination host %s", d.GetHost())
	} else if err := wildcardDomain(d.GetHost()); err != nil {
		c.fail(field+".host", "%v", err)
	}
	if d.GetSubset() != "" && !isIstioLabel(d.GetSubset()) {
		c.fail(field+".subset", "subset name is invalid: %s", d.GetSubset())
	}
	if d.GetPort() != nil && !validPort(d.GetPort().GetNumber()) {
		c.fail(field+".port.number", "port number %d must be in the range 1..65535", d.GetPort().GetNumber())
	}
}

// labels checks a label map (sourceLabels, subset labels).
func (c *checker) labels(field string, l map[string]string) {
	for _, k := range sortedKeys(l) {
		if !labelKey.MatchString(k) {
			c.fail(key(field, k), "invalid tag key: %q", k)
		}
		if !labelValue.MatchString(l[k]) {
			c.fail(key(field, k), "invalid tag value: %q", l[k])
		}
	}
}
