// Package golden compares test output with golden files, and rewrites them when the tests of xdsserver run with -update (every test package there imports it, so the flag is always defined).
package golden

import (
	"flag"
	"os"
	"testing"
)

// Update is the -update flag: rewrite golden files instead of comparing.
var Update = flag.Bool("update", false, "rewrite golden files")

// Check compares got with the file at path, or rewrites the file with -update.
func Check(t testing.TB, path, got string) {
	t.Helper()
	if *Update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./xdsserver/... -update)", err)
	}
	if string(want) != got {
		t.Errorf("%s is stale or wrong (go test ./xdsserver/... -update to refresh); got:\n%s", path, got)
	}
}
