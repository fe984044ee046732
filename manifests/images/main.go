// Command images builds the OCI images of xdsserver, ztunnel and the embedded waypoint from their static binaries, as docker-archive tarballs (docker load, kind load image-archive, ctr images import) without a container engine.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// User is the images' user: nobody's usual uid in distroless images. The ztunnel DaemonSet
// runs its container as root (it needs setns), as Istio's does.
const User = "65532:65532"

// Components are the images built, by binary name.
var Components = []string{"xdsserver", "ztunnel", "waypoint"}

// epoch is every file's and the config's time, so that the same binary gives the same digest.
var epoch = time.Unix(0, 0).UTC()

func main() {
	bin := flag.String("bin", "bin", "folder of the static binaries (make build)")
	out := flag.String("out", "bin/images", "folder the tarballs are written to (<component>.tar)")
	repo := flag.String("repo", "goambient", "image repository prefix")
	tag := flag.String("tag", "dev", "image tag")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
	for _, c := range Components {
		ref := *repo + "/" + c + ":" + *tag
		path := filepath.Join(*out, c+".tar")
		if err := Write(filepath.Join(*bin, c), ref, path); err != nil {
			fmt.Fprintln(os.Stderr, "images:", err)
			os.Exit(1)
		}
		fmt.Println(path, ref)
	}
}

// Write builds the image of the binary at binPath and writes it, tagged ref, to path.
func Write(binPath, ref, path string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("%s: %w", ref, err)
	}
	img, err := Build(binPath)
	if err != nil {
		return err
	}
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// Build is one layer holding the binary at /usr/local/bin/<name>, /etc/passwd and /etc/group
// naming the user, and an empty /tmp; the entrypoint is the binary, the user non-root. There is
// no shell nor anything else.
func Build(binPath string) (v1.Image, error) {
	b, err := os.ReadFile(binPath)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	exe := "/usr/local/bin/" + filepath.Base(binPath)
	layerTar, err := layer([]file{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnonroot:x:65532:\n")},
		{name: "tmp/", mode: 0o1777, dir: true},
		{name: "usr/", mode: 0o755, dir: true},
		{name: "usr/local/", mode: 0o755, dir: true},
		{name: "usr/local/bin/", mode: 0o755, dir: true},
		{name: exe[1:], mode: 0o755, data: b},
	})
	if err != nil {
		return nil, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil })
	if err != nil {
		return nil, fmt.Errorf("image layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = []string{exe}
	cf.Config.User = User
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/usr/local/bin"}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":  "goambient " + filepath.Base(binPath),
		"org.opencontainers.image.source": "https://github.com/goambient/goambient",
	}
	return mutate.ConfigFile(img, cf)
}

type file struct {
	name string
	mode int64
	dir  bool
	data []byte
}

func layer(files []file) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: epoch, Typeflag: tar.TypeReg, Size: int64(len(f.data)), Format: tar.FormatPAX}
		if f.dir {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
