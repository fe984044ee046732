package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Each component's image, built from its real static binary, read back from the tarball: the
// docker-archive's repo tag, the entrypoint, the non-root user, and one layer whose file at
// the entrypoint is the binary, byte for byte, with nothing like a shell beside it.
func TestImages(t *testing.T) {
	bin, out := t.TempDir(), t.TempDir()
	args := []string{"build", "-o", bin + "/"}
	for _, c := range Components {
		args = append(args, "../../cmd/"+c)
	}
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	for _, c := range Components {
		ref := "goambient/" + c + ":test"
		path := filepath.Join(out, c+".tar")
		if err := Write(filepath.Join(bin, c), ref, path); err != nil {
			t.Fatal(err)
		}
		if tags := repoTags(t, path); !slices.Equal(tags, []string{ref}) {
			t.Errorf("%s: manifest.json RepoTags %v, want [%s]", c, tags, ref)
		}
		tag, _ := name.NewTag(ref)
		img, err := tarball.ImageFromPath(path, &tag)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		exe := "/usr/local/bin/" + c
		if !slices.Equal(cf.Config.Entrypoint, []string{exe}) || cf.Config.User != User || cf.OS != "linux" {
			t.Errorf("%s: entrypoint %v user %q os %q", c, cf.Config.Entrypoint, cf.Config.User, cf.OS)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("%s: %d layers, %v", c, len(layers), err)
		}
		rc, err := layers[0].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		files := map[string][]byte{}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(tr)
			files["/"+h.Name] = b
			if h.Name == exe[1:] && h.Mode&0o111 == 0 {
				t.Errorf("%s: %s is not executable (%o)", c, exe, h.Mode)
			}
		}
		rc.Close()
		want, _ := os.ReadFile(filepath.Join(bin, c))
		if !bytes.Equal(files[exe], want) {
			t.Errorf("%s: the layer's %s is not the binary (%d bytes, want %d)", c, exe, len(files[exe]), len(want))
		}
		for _, sh := range []string{"/bin/sh", "/bin/bash", "/bin/busybox"} {
			if _, ok := files[sh]; ok {
				t.Errorf("%s: the image has %s", c, sh)
			}
		}
		if !bytes.Contains(files["/etc/passwd"], []byte(":65532:65532:")) {
			t.Errorf("%s: /etc/passwd does not name the user 65532", c)
		}
	}
}

// repoTags reads the docker-archive's manifest.json, which docker load and kind read the
// image's name from.
func repoTags(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s: no manifest.json: %v", path, err)
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil || len(m) != 1 {
			t.Fatalf("%s: manifest.json: %v", path, err)
		}
		return m[0].RepoTags
	}
}
