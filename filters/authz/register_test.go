package authz_test

import (
	"bytes"
	"debug/elf"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goambient/goambient/filters/authzconfig"
)

// TestRegisteredName guards Envoy's fail-open trap: a plugin_name that filters.so does not
// register makes Envoy pass every request through. filters/cmd/filters must register the
// filter under authzconfig.PluginName (the constant every config producer uses), with this
// package's Factory and Parser. This test reads main.go rather than importing it: a test
// binary that links the SDK's registration package crashes at init without Envoy.
func TestRegisteredName(t *testing.T) {
	const main = "../cmd/filters/main.go"
	f, err := parser.ParseFile(token.NewFileSet(), main, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var calls []*ast.CallExpr
	ast.Inspect(f, func(n ast.Node) bool {
		if c, ok := n.(*ast.CallExpr); ok {
			if sel, ok := c.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "RegisterHttpFilterFactoryAndConfigParser" {
				calls = append(calls, c)
			}
		}
		return true
	})
	// authz, its CUSTOM-match mode, and filters/istiostats's request metrics.
	wants := [][]string{
		{"authzconfig.PluginName", "authz.Factory", "authz.Parser{}"},
		{"authzconfig.CustomPluginName", "authz.CustomFactory", "authz.Parser{}"},
		{"istiostats.PluginName", "istiostats.Factory", "istiostats.Parser{}"},
	}
	if len(calls) != len(wants) {
		t.Fatalf("%s: %d RegisterHttpFilterFactoryAndConfigParser calls, want %d", main, len(calls), len(wants))
	}
	for c, want := range wants {
		args := calls[c].Args
		if len(args) != len(want) {
			t.Fatalf("register call %d has %d arguments", c, len(args))
		}
		for i, a := range args {
			var b strings.Builder
			if err := formatExpr(&b, a); err != nil || b.String() != want[i] {
				t.Errorf("call %d argument %d is %q, want %s", c, i, b.String(), want[i])
			}
		}
	}
}

func formatExpr(b *strings.Builder, e ast.Expr) error {
	switch x := e.(type) {
	case *ast.SelectorExpr:
		if err := formatExpr(b, x.X); err != nil {
			return err
		}
		b.WriteString("." + x.Sel.Name)
	case *ast.Ident:
		b.WriteString(x.Name)
	case *ast.CompositeLit:
		if err := formatExpr(b, x.Type); err != nil {
			return err
		}
		if len(x.Elts) > 0 {
			return os.ErrInvalid
		}
		b.WriteString("{}")
	default:
		return os.ErrInvalid
	}
	return nil
}

// TestBuiltLibrary builds filters.so as `make filters` does and checks that it exports the
// SDK's entry points and carries the plugin name. The build takes tens of seconds: skipped
// with -short, and when no go command or C compiler is on PATH.
func TestBuiltLibrary(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: not building filters.so")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH: not building filters.so")
	}
	if _, err := exec.LookPath("gcc"); err != nil && os.Getenv("CC") == "" {
		t.Skip("no C compiler (gcc or $CC): cannot build a c-shared library")
	}
	so := filepath.Join(t.TempDir(), "filters.so")
	cmd := exec.Command(gobin, "build", "-buildmode=c-shared", "-o", so, "./filters/cmd/filters")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build -buildmode=c-shared: %v\n%s", err, out)
	}
	ef, err := elf.Open(so)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	syms, err := ef.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	exports := map[string]bool{}
	for _, s := range syms {
		if s.Section != elf.SHN_UNDEF {
			exports[s.Name] = true
		}
	}
	for _, want := range []string{
		"envoyGoFilterNewHttpPluginConfig", "envoyGoFilterMergeHttpPluginConfig",
		"envoyGoFilterOnHttpHeader", "envoyGoFilterOnHttpDestroy",
	} {
		if !exports[want] {
			t.Errorf("filters.so does not export %s", want)
		}
	}
	data, err := os.ReadFile(so)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(authzconfig.PluginName)) {
		t.Errorf("filters.so does not contain %q", authzconfig.PluginName)
	}
}
