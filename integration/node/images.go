package node

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The node's own images (the project's are goambient/{xdsserver,ztunnel,waypoint}:dev, made by
// manifests/images).
const (
	// PauseImage is every pod sandbox's image (containerd's sandbox_image): cmd/pause.
	PauseImage = "goambient/pause:dev"
	// AppImage is the scenarios' application and client: cmd/testapp, also at /usr/bin/curl.
	AppImage = "goambient/testapp:dev"
	// DNSImage is CoreDNS built from its module (tools/coredns), the cluster DNS.
	DNSImage = "goambient/coredns:dev"
)

// BuildImages builds, from the repository at root, the static binaries and the images the
// node runs into out/bin and out/images, and returns the tarballs: the pause image, the test
// application, CoreDNS, and the project's images by manifests/images.
func BuildImages(ctx context.Context, root, out string) ([]string, error) {
	bin := filepath.Join(out, "bin")
	imgDir := filepath.Join(out, "images")
	for _, d := range []string{bin, imgDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	env := append(os.Environ(), "CGO_ENABLED=0")
	steps := []struct {
		dir  string
		args []string
	}{
		{root, []string{"build", "-trimpath", "-ldflags=-s -w", "-o", bin + "/", "./cmd/xdsserver", "./cmd/ztunnel", "./cmd/waypoint",
			"./integration/node/cmd/pause", "./integration/node/cmd/testapp"}},
		{filepath.Join(root, "integration/node/tools"), []string{"build", "-trimpath", "-ldflags=-s -w", "-o", bin + "/coredns", "./coredns"}},
		{root, []string{"run", "./manifests/images", "--bin", bin, "--out", imgDir}},
	}
	for _, s := range steps {
		cmd := exec.CommandContext(ctx, "go", s.args...)
		cmd.Dir, cmd.Env = s.dir, env
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("node: go %s: %v\n%s", strings.Join(s.args, " "), err, b)
		}
	}
	tars := []string{}
	for _, c := range []string{"xdsserver", "ztunnel", "waypoint"} {
		tars = append(tars, filepath.Join(imgDir, c+".tar"))
	}
	own := []struct {
		ref, binary string
		links       []string
	}{
		{PauseImage, "pause", nil},
		{AppImage, "testapp", []string{"usr/bin/curl"}},
		{DNSImage, "coredns", nil},
	}
	for _, o := range own {
		path := filepath.Join(imgDir, o.binary+".tar")
		if err := writeImage(filepath.Join(bin, o.binary), o.ref, path, o.links); err != nil {
			return nil, err
		}
		tars = append(tars, path)
	}
	return tars, nil
}

// epoch is every file's and config's time: the same binary gives the same image.
var epoch = time.Unix(0, 0).UTC()

// writeImage writes a docker-archive of one layer: the binary at /usr/local/bin/<name> (the
// entrypoint), symbolic links to it at links, /etc/passwd, /etc/group and /tmp.
func writeImage(binPath, ref, out string, links []string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(binPath)
	if err != nil {
		return err
	}
	exe := "usr/local/bin/" + filepath.Base(binPath)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(h *tar.Header, data []byte) error {
		h.ModTime, h.Format = epoch, tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"etc/", "tmp/", "usr/", "usr/bin/", "usr/local/", "usr/local/bin/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := hdr(&tar.Header{Name: d, Mode: mode, Typeflag: tar.TypeDir}, nil); err != nil {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
		"etc/group":  "root:x:0:\nnonroot:x:65532:\n",
	}
	for _, f := range []string{"etc/group", "etc/passwd"} {
		if err := hdr(&tar.Header{Name: f, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(files[f]))}, []byte(files[f])); err != nil {
			return err
		}
	}
	if err := hdr(&tar.Header{Name: exe, Mode: 0o755, Typeflag: tar.TypeReg, Size: int64(len(b))}, b); err != nil {
		return err
	}
	for _, l := range links {
		if err := hdr(&tar.Header{Name: l, Mode: 0o777, Typeflag: tar.TypeSymlink, Linkname: "/" + exe}, nil); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerBytes)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = []string{"/" + exe}
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	if err := tarball.WriteToFile(out, tag, img); err != nil {
		return fmt.Errorf("node: image %s: %w", ref, err)
	}
	return nil
}
