package policies

import (
	"errors"
	"math/rand/v2"
	"testing"
)

// TestNormalizePath: Envoy v1.39's own cases for PathUtil::canonicalPath
// (test/common/http/path_utility_test.cc: AlreadyNormalPaths, InvalidPaths, NormalizeValidPaths,
// NormalizeCasePath), then what googleurl's canonicalizer does with invalid and nested escapes,
// and the reproducers FuzzEvaluate found when a stray '%' was copied without its nested-escape
// check ("%7%41" became "/%7A", which normalised again to "/z").
func TestNormalizePath(t *testing.T) {
	for _, c := range []struct {
		in, want string
		err      error
	}{
		// Envoy's tests.
		{in: "/xyz", want: "/xyz"},
		{in: "/x/y/z", want: "/x/y/z"},
		{in: "/xyz/.%00../abc", err: ErrNullInPath},
		{in: "/xyz/%00.%00./abc", err: ErrNullInPath},
		{in: "/xyz/AAAAA%%0000/abc", err: ErrNullInPath},
		{in: "/a/b/../c", want: "/a/c"},
		{in: "/a/b/./c", want: "/a/b/c"},
		{in: "a/b/../c", want: "/a/c"},
		{in: "/a/b/../../../../c", want: "/c"},
		{in: `/a/..\c`, want: "/c"},
		{in: "/%c0%af", want: "/%c0%af"},
		{in: "/%5c%25", want: "/%5c%25"},
		{in: "/a/b/%2E%2E/c", want: "/a/c"},
		{in: "/A/B/C", want: "/A/B/C"},
		{in: "/a/b/%2e%2e/c", want: "/a/c"},
		{in: "/a/%2F%2f/c", want: "/a/%2F%2f/c"}, // kept as written, hex case included
		// The query is cut off; a fragment is rejected (Envoy's http_reject_path_with_fragment).
		{in: "/a/b?x=1", want: "/a/b"},
		{in: "/a?x=%00", want: "/a"}, // the query is not canonicalised
		{in: "/a/b#f", err: ErrFragmentInPath},
		{in: "/a/b?x=1#f", err: ErrFragmentInPath},
		// Unreserved escapes are decoded, others kept; bytes to escape are escaped.
		{in: "/%61%2e%2E/x", want: "/a../x"},
		{in: "/a%2eb", want: "/a.b"},
		{in: "/%41%7a%30%2d%5f%7e", want: "/Az0-_~"},
		{in: "/a%2fb%3a", want: "/a%2fb%3a"},
		{in: "/a b\"<>^`{|}\x7f\x01", want: "/a%20b%22%3C%3E%5E%60%7B%7C%7D%7F%01"},
		{in: "/é", want: "/%C3%A9"},
		{in: "/a*[]!$&'()+,;=:@", want: "/a*[]!$&'()+,;=:@"},
		{in: "/a\x00b", err: ErrNullInPath},
		{in: "/a%00b", err: ErrNullInPath},
		// Dot segments.
		{in: "/", want: "/"},
		{in: "", want: "/"},
		{in: ".", want: "/"},
		{in: "/a/b/..", want: "/a/"},
		{in: "/a/.", want: "/a/"},
		{in: "/../../a", want: "/a"},
		{in: `\a\b`, want: "/a/b"},
		{in: "/a/.../b", want: "/a/.../b"},
		{in: "/a/.x/..y", want: "/a/.x/..y"},
		{in: "/a//b", want: "/a//b"}, // BASE does not merge slashes
		{in: "/a/%2e%2E%2f", want: "/a/..%2f"},
		// Invalid escapes are kept; an escape they would form once decoded becomes %25.
		{in: "/%", want: "/%"},
		{in: "/%zz/%4", want: "/%zz/%4"},
		{in: "/%%30", want: "/%0"},
		{in: "/%%300", want: "/%2500"},
		{in: "/%%30%30", want: "/%2500"},
		{in: "/%%3030", want: "/%25030"},
		{in: "/%7%41", want: "/%257A"},
		{in: "%7%41", want: "/%257A"},
		{in: "/a/%2%65%2%65/b", want: "/a/%252e%252e/b"},
		{in: "/%%41%41", want: "/%25AA"},
		{in: "/%2%2e", want: "/%2."},
		{in: "/%/../%41%42", want: "/AB"},
		{in: "/%a/../%42%43", want: "/BC"},
	} {
		got, err := NormalizePath(c.in)
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("NormalizePath(%q) = %q, %v; want error %v", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("NormalizePath(%q) = %q, %v; want %q", c.in, got, err, c.want)
			continue
		}
		if again, err := NormalizePath(got); err != nil || again != got {
			t.Errorf("NormalizePath is not idempotent on %q: %q, %v", got, again, err)
		}
		if isNormal(c.in) != (c.in == c.want) {
			t.Errorf("isNormal(%q) = %v, but NormalizePath gives %q", c.in, isNormal(c.in), got)
		}
	}
}

// TestNormalizePathIsIdempotent runs NormalizePath twice on random paths made of the bytes that
// matter ('%', hex digits, '.', '/', '\', bytes to escape, NUL): the second run changes nothing,
// and isNormal is true exactly on its fixed points.
func TestNormalizePathIsIdempotent(t *testing.T) {
	const alphabet = "%%%2eE0aA7F/./\\.x ?\x00\xc3"
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 0, 16)
	for range 200000 {
		buf = buf[:0]
		for range rng.IntN(12) {
			buf = append(buf, alphabet[rng.IntN(len(alphabet))])
		}
		in := string(buf)
		p, err := NormalizePath(in)
		if err != nil {
			continue
		}
		if again, err := NormalizePath(p); err != nil || again != p {
			t.Fatalf("NormalizePath(%q) = %q, then %q, %v", in, p, again, err)
		}
		if !isNormal(p) {
			t.Fatalf("isNormal(%q) is false on a normalised path (from %q)", p, in)
		}
		if isNormal(in) && p != in {
			t.Fatalf("isNormal(%q) is true, but NormalizePath gives %q", in, p)
		}
	}
}

func TestNormalizePathDoesNotAllocateOnNormalPaths(t *testing.T) {
	for _, p := range []string{"/api/v1/items?limit=10", "/a.b/.c/...", "/static/app.js", "/", "/a%2Fb%20c/%zz"} {
		if n := testing.AllocsPerRun(100, func() { _, _ = NormalizePath(p) }); n != 0 {
			t.Errorf("%q: allocations = %v, want 0", p, n)
		}
	}
}
