package policies

import "strings"

// Error is one problem with one object: where it was read, which object, which field, and why.
type Error struct {
	Origin Origin
	Kind   string // AuthorizationPolicy, PeerAuthentication, or "" when the document could not be read
	Object string // "ns/name", or "" when unknown
	Field  string // path inside the object, e.g. spec.rules[0].to[0].operation.paths[1]
	Reason string
}

func (e *Error) Error() string {
	var b strings.Builder
	if s := e.Origin.String(); s != "" {
		b.WriteString(s)
		b.WriteString(": ")
	}
	if e.Kind != "" {
		b.WriteString(e.Kind)
		b.WriteString(" ")
	}
	if e.Object != "" {
		b.WriteString(e.Object)
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// Warning is a non-fatal remark on a valid object (for example what ztunnel cannot enforce).
type Warning = Error
