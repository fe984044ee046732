package policies

import (
	"errors"
	"strings"
)

// ErrNullInPath is returned for a path containing %00, which Istio rejects with 400.
var ErrNullInPath = errors.New("path contains %00")

// NormalizePath applies Istio's default path normalisation (BASE, Envoy's normalize_path) to a
// request path before matching: the query and fragment are cut off, `\` becomes `/`,
// percent-encoded unreserved characters are decoded and other escapes upper-cased, dot segments
// are resolved (RFC 3986 §5.2.4) and a leading `/` is ensured. A path already in normal form is
// returned without allocating.
func NormalizePath(raw string) (string, error) {
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		raw = raw[:i]
	}
	if strings.Contains(raw, "%00") {
		return "", ErrNullInPath
	}
	if isNormal(raw) {
		return raw, nil
	}
	var b strings.Builder
	b.Grow(len(raw) + 1)
	if !strings.HasPrefix(raw, "/") && !strings.HasPrefix(raw, `\`) {
		b.WriteByte('/')
	}
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '\\':
			b.WriteByte('/')
		case c == '%' && i+2 < len(raw) && isHex(raw[i+1]) && isHex(raw[i+2]):
			v := unhex(raw[i+1])<<4 | unhex(raw[i+2])
			if isUnreserved(v) {
				b.WriteByte(v)
			} else {
				b.WriteByte('%')
				b.WriteByte(upper(raw[i+1]))
				b.WriteByte(upper(raw[i+2]))
			}
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return removeDotSegments(b.String()), nil
}

// isNormal reports whether p needs no change: it starts with '/', has no '\\' or '%' and no
// "." or ".." segment. It does not allocate.
func isNormal(p string) bool {
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, `\%`) {
		return false
	}
	for i := 0; i < len(p); {
		j := strings.IndexByte(p[i+1:], '/')
		end := len(p)
		if j >= 0 {
			end = i + 1 + j
		}
		if seg := p[i+1 : end]; seg == "." || seg == ".." {
			return false
		}
		i = end
	}
	return true
}

// removeDotSegments resolves "." and ".." segments of an absolute path.
func removeDotSegments(p string) string {
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

func upper(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}
