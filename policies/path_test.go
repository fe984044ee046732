package policies

import "testing"

func TestNormalizePath(t *testing.T) {
	for _, c := range []struct{ in, want, err string }{
		{in: "/", want: "/"},
		{in: "/a/b?x=1#f", want: "/a/b"},
		{in: "/a/./b/../c", want: "/a/c"},
		{in: "/a/b/..", want: "/a/"},
		{in: "/../../a", want: "/a"},
		{in: `\a\b`, want: "/a/b"},
		{in: "/%61%2e%2E/x", want: "/a../x"},
		{in: "/%2e%2e/secret", want: "/secret"},
		{in: "/a%2fb%3a", want: "/a%2Fb%3A"},
		{in: "a/b", want: "/a/b"},
		{in: "/a//b", want: "/a//b"}, // BASE does not merge slashes
		{in: "/a%00b", err: "path contains %00"},
	} {
		got, err := NormalizePath(c.in)
		if c.err != "" {
			if err == nil || err.Error() != c.err {
				t.Errorf("NormalizePath(%q) error = %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("NormalizePath(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
		if again, _ := NormalizePath(got); again != got {
			t.Errorf("NormalizePath is not idempotent on %q: %q", got, again)
		}
	}
}

func TestNormalizePathDoesNotAllocateOnNormalPaths(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { _, _ = NormalizePath("/api/v1/items?limit=10") }); n != 0 {
		t.Errorf("allocations = %v, want 0", n)
	}
}
