package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

func TestDemoUsage(t *testing.T) {
	for _, args := range [][]string{{"--scenario", "nope"}, {"extra"}, {"--bogus"}} {
		var out, errb bytes.Buffer
		if code := run(append([]string{"demo"}, args...), &out, &errb); code != 2 {
			t.Errorf("meshctl demo %v: exit %d, want 2\n%s", args, code, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"demo", "-h"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "--scenario") {
		t.Errorf("meshctl demo -h: exit %d\n%s", code, errb.String())
	}
}

// TestDemoAllScenarios is `make demo`: it builds the binaries, starts the stack of each
// scenario on loopback and plays it; every check of every scenario must pass.
func TestDemoAllScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the whole stack four times; skipped under -short")
	}
	var out, errb bytes.Buffer
	code := run([]string{"demo", "--scenario", "all"}, &out, &errb)
	t.Logf("meshctl demo --scenario all (exit %d):\n%s%s", code, out.String(), errb.String())
	for _, name := range []string{"handson", "demo-strict", "bookinfo-lite", "traffic"} {
		if !regexp.MustCompile(`(?m)^` + name + `: all \d+ checks passed$`).MatchString(out.String()) {
			t.Errorf("%s did not pass", name)
		}
	}
	if code != 0 {
		t.Errorf("exit %d, want 0", code)
	}
}
