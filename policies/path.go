package policies

import (
	"errors"
	"strings"
)

// Errors NormalizePath returns for a path Envoy answers with 400 (path_normalization_failed).
var (
	// ErrNullInPath: the path holds a NUL, raw or as %00; googleurl's canonicalizer fails on it.
	ErrNullInPath = errors.New("path contains a NUL (%00)")
	// ErrFragmentInPath: the :path holds a '#'; Envoy's HTTP connection manager rejects it
	// (runtime guard envoy.reloadable_features.http_reject_path_with_fragment, true by default).
	ErrFragmentInPath = errors.New("path contains a fragment ('#')")
)

// NormalizePath returns the path part of a request's :path (the query cut off) as Envoy's
// normalize_path leaves it: Istio's default BASE normalisation (normalize_path true,
// merge_slashes false, path_with_escaped_slashes_action KEEP_UNCHANGED). Envoy runs googleurl's
// url::CanonicalizePath (Chromium's url_canon_path.cc) on the part before '?'; this is the same
// algorithm, byte for byte:
//   - a leading '/' is ensured and `\` becomes '/';
//   - an escape of an unreserved character (ALPHA DIGIT - . _ ~) is decoded, any other valid
//     escape is kept as written (hex case included);
//   - a '%' not followed by two hex digits is kept, and if decoding the escapes after it would
//     make it the start of a valid escape ("%%30%30", "%7%41") it becomes "%25", so that the
//     output does not change when it is normalised again;
//   - control characters, space, `"`, `<`, `>`, `^`, '`', `{`, `|`, `}`, DEL and bytes >= 0x80
//     are escaped as %XX;
//   - "." and ".." segments (also written %2e) are resolved; ".." never goes above the root;
//   - a NUL (raw or %00) fails: Envoy answers 400.
//
// A ':path' holding '#' fails too (Envoy rejects fragments before normalising). A path already
// in normal form is returned without allocating.
func NormalizePath(raw string) (string, error) {
	if strings.IndexByte(raw, '#') >= 0 {
		return "", ErrFragmentInPath
	}
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i]
	}
	if isNormal(raw) {
		return raw, nil
	}
	return canonicalizePath(raw)
}

// Flags of pathChars: googleurl's kPathCharLookup (url_canon_path.cc).
const (
	pathPass     = 0
	pathSpecial  = 1               // needs a closer look: '.', '%', '\' and the flags below
	pathEscape   = 2 | pathSpecial // written as %XX
	pathUnescape = 4               // an escape of it is decoded
	pathInvalid  = 8 | pathSpecial // fails the canonicalisation (NUL)
	pathEscapeIt = pathEscape &^ pathSpecial
)

// pathChars classifies every byte as googleurl's path canonicalizer does.
var pathChars = func() (t [256]uint8) {
	for c := range 256 {
		switch {
		case c == 0:
			t[c] = pathInvalid
		case c < 0x20, c >= 0x7f:
			t[c] = pathEscape
		case isUnreserved(byte(c)) && c != '.':
			t[c] = pathUnescape
		case c == '.':
			t[c] = pathSpecial
		case strings.IndexByte(" \"#%<>?\\^`{|}", byte(c)) >= 0:
			t[c] = pathEscape
		default: // ! $ & ' ( ) * + , / : ; = @ [ ]
			t[c] = pathPass
		}
	}
	return t
}()

// isNormal reports whether canonicalizePath would return p unchanged: p starts with '/', has no
// "." or ".." segment, and every other byte is copied as it is: no '\', no byte to escape, no
// NUL, and every '%' either starts an escape that is kept as written (not of an unreserved
// character, not %2e, not %00) or no valid escape at all. It does not allocate.
func isNormal(p string) bool {
	if len(p) == 0 || p[0] != '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if pathChars[c]&pathSpecial == 0 {
			continue
		}
		switch c {
		case '.':
			if p[i-1] != '/' { // part of a name (p[0] is '/', so a '.' has a predecessor)
				continue
			}
			// "." or ".." is a dot segment; ".x" and "..." are names.
			n := 1
			if i+1 < len(p) && p[i+1] == '.' {
				n = 2
			}
			if i+n == len(p) || p[i+n] == '/' {
				return false
			}
			i += n - 1
		case '%':
			if dotLen(p, i) > 0 {
				return false
			}
			if v, ok := decodeEscape(p, i); ok {
				if pathChars[v]&pathUnescape != 0 || v == 0 {
					return false
				}
				i += 2
			}
		default:
			return false
		}
	}
	return true
}

// canonicalizePath is googleurl's DoPath / DoPartialPath for 8-bit input.
func canonicalizePath(in string) (string, error) {
	out := make([]byte, 0, len(in)+8)
	if len(in) == 0 || !isURLSlash(in[0]) {
		out = append(out, '/')
	}
	failed := false
	lastInvalidPercent := -1 // index in out of a '%' that did not start a valid escape
	for i := 0; i < len(in); i++ {
		c := in[i]
		flags := pathChars[c]
		if flags&pathSpecial == 0 {
			out = append(out, c)
			continue
		}
		if dot := dotLen(in, i); dot > 0 {
			if out[len(out)-1] != '/' { // part of a name
				out = append(out, '.')
				i += dot - 1
				continue
			}
			switch kind, consumed := classifyAfterDot(in, i+dot); kind {
			case dotName:
				out = append(out, '.')
				i += dot - 1
			case dotCurrent:
				i += dot + consumed - 1
			case dotParent:
				out = backUpToPreviousSlash(out)
				if lastInvalidPercent >= len(out) {
					lastInvalidPercent = -1
				}
				i += dot + consumed - 1
			}
			continue
		}
		switch {
		case c == '\\':
			out = append(out, '/')
		case c == '%':
			v, ok := decodeEscape(in, i)
			if !ok {
				lastInvalidPercent = len(out)
				out = append(out, '%')
				continue
			}
			i += 2
			if vf := pathChars[v]; vf&pathUnescape != 0 {
				out = append(out, v)
				if lastInvalidPercent >= 0 && lastInvalidPercent+3 >= len(out) {
					out = fixNestedEscape(in, i+1, lastInvalidPercent, out)
				}
			} else {
				out = append(out, '%', in[i-1], in[i]) // kept as written
				if vf&pathInvalid == pathInvalid {
					failed = true
				}
			}
		case flags&pathInvalid == pathInvalid:
			out = appendEscaped(out, c)
			failed = true
		case flags&pathEscapeIt != 0:
			out = appendEscaped(out, c)
		}
	}
	if failed {
		return "", ErrNullInPath
	}
	return string(out), nil
}

func isURLSlash(c byte) bool { return c == '/' || c == '\\' }

// dotLen is googleurl's IsDot: 1 for ".", 3 for "%2e" or "%2E", else 0.
func dotLen(s string, i int) int {
	switch {
	case s[i] == '.':
		return 1
	case s[i] == '%' && i+3 <= len(s) && s[i+1] == '2' && (s[i+2] == 'e' || s[i+2] == 'E'):
		return 3
	}
	return 0
}

type dotKind uint8

const (
	dotName    dotKind = iota // the dot is part of a name
	dotCurrent                // "." segment
	dotParent                 // ".." segment
)

// classifyAfterDot is googleurl's ClassifyAfterDot: what a dot that follows a '/' in the output
// is, given the input after it, and how many input bytes after the dot that takes.
func classifyAfterDot(s string, after int) (dotKind, int) {
	if after == len(s) {
		return dotCurrent, 0
	}
	if isURLSlash(s[after]) {
		return dotCurrent, 1
	}
	if second := dotLen(s, after); second > 0 {
		next := after + second
		if next == len(s) {
			return dotParent, second
		}
		if isURLSlash(s[next]) {
			return dotParent, second + 1
		}
	}
	return dotName, 0
}

// backUpToPreviousSlash drops the last segment of out, which ends with '/', never going above
// the leading '/'.
func backUpToPreviousSlash(out []byte) []byte {
	i := len(out) - 1
	if i == 0 {
		return out
	}
	i--
	for out[i] != '/' && i > 0 {
		i--
	}
	return out[:i+1]
}

// decodeEscape decodes "%XY" at s[i], if X and Y are hex digits.
func decodeEscape(s string, i int) (byte, bool) {
	if i+3 > len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
		return 0, false
	}
	return unhex(s[i+1])<<4 | unhex(s[i+2]), true
}

// fixNestedEscape is googleurl's CheckForNestedEscapes: out ends with a byte just decoded, one
// or two bytes after a '%' (at pct) that did not start a valid escape in the input. If that '%'
// now starts a valid escape (with the next input byte when only one byte follows it), it is
// rewritten as "%25", so that normalising the output again leaves it unchanged.
func fixNestedEscape(in string, next, pct int, out []byte) []byte {
	length := len(out)
	last := out[length-1]
	appendNext := pct == length-2
	if appendNext {
		if next == len(in) || in[next] >= 0x80 {
			return out
		}
		out = append(out, in[next])
	}
	if len(out) >= pct+3 && isHex(out[pct+1]) && isHex(out[pct+2]) {
		if !appendNext {
			out = append(out, out[pct+1])
		}
		out[pct+1], out[pct+2] = '2', '5'
		return append(out, last)
	}
	return out[:length]
}

func appendEscaped(out []byte, c byte) []byte {
	const hex = "0123456789ABCDEF"
	return append(out, '%', hex[c>>4], hex[c&0xf])
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

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}
