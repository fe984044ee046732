package demo

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// modulePath is the module the demo builds its binaries from.
const modulePath = "github.com/goambient/goambient"

// FindModuleRoot returns the folder of goambient's go.mod at or above dir.
func FindModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && moduleLine(b) == modulePath {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of %s at or above the current folder: run meshctl demo from a clone of the repository (or pass --root)", modulePath)
		}
		dir = parent
	}
}

func moduleLine(gomod []byte) string {
	for _, l := range strings.Split(string(gomod), "\n") {
		if m, ok := strings.CutPrefix(strings.TrimSpace(l), "module "); ok {
			return strings.Trim(strings.TrimSpace(m), `"`)
		}
	}
	return ""
}

// Binaries are the built programs by name; a program that did not build has an error instead.
type Binaries struct {
	Path map[string]string
	Err  map[string]error
}

// required are the binaries without which no scenario runs; waypoint is optional (steps that
// need it fail, the others run).
var required = []string{"xdsserver", "ztunnel", "meshctl"}

// Build builds the demo's binaries from the module at root into dir with `go build`.
func Build(root, dir string) (*Binaries, error) {
	bins := &Binaries{Path: map[string]string{}, Err: map[string]error{}}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, n := range required {
		args = append(args, "./cmd/"+n)
	}
	if out, err := goCmd(root, args...); err != nil {
		return nil, fmt.Errorf("go build: %v\n%s", err, out)
	}
	for _, n := range required {
		bins.Path[n] = filepath.Join(dir, n)
	}
	wp := filepath.Join(dir, "waypoint")
	if _, err := os.Stat(filepath.Join(root, "cmd", "waypoint")); err != nil {
		bins.Err["waypoint"] = errors.New("cmd/waypoint does not exist in " + root)
	} else if out, err := goCmd(root, "build", "-o", wp, "./cmd/waypoint"); err != nil {
		bins.Err["waypoint"] = fmt.Errorf("go build ./cmd/waypoint: %v: %s", err, firstLines(out, 8))
	} else {
		bins.Path["waypoint"] = wp
	}
	return bins, nil
}

func goCmd(dir string, args ...string) (string, error) {
	c := exec.Command("go", args...)
	c.Dir = dir
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	return out.String(), err
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n")
}
