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
	// InstallCNIImage is Istio's node agent (install-cni and the istio-cni plugin, from go.mod's
	// istio.io/istio, built in tools/).
	InstallCNIImage = "goambient/install-cni:dev"
)

// BuildImages builds, from the repository at root, the static binaries and the images the
// node runs into out/bin and out/images, and returns the tarballs: the pause image, the test
// application, CoreDNS, Istio's istio-cni, and the project's images by manifests/images.
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
		{filepath.Join(root, "integration/node/tools"), []string{"build", "-trimpath", "-ldflags=-s -w", "-o", bin + "/", "./coredns",
			"istio.io/istio/cni/cmd/install-cni", "istio.io/istio/cni/cmd/istio-cni"}},
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
	path := filepath.Join(imgDir, "install-cni.tar")
	if err := writeInstallCNIImage(bin, path); err != nil {
		return nil, err
	}
	tars = append(tars, path)
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

// imageFile is one file of an image: the content of a host file (symbolic links followed),
// or a symbolic link.
type imageFile struct {
	path string // in the image, without the leading slash
	host string // a host file whose content it is
	link string // else: the target of a symbolic link
}

// writeImage writes a docker-archive of one layer: the binary at /usr/local/bin/<name> (the
// entrypoint), symbolic links to it at links, /etc/passwd, /etc/group and /tmp.
func writeImage(binPath, ref, out string, links []string) error {
	exe := "usr/local/bin/" + filepath.Base(binPath)
	files := []imageFile{{path: exe, host: binPath}}
	for _, l := range links {
		files = append(files, imageFile{path: l, link: "/" + exe})
	}
	return writeFilesImage(ref, out, "/"+exe, files)
}

// writeFilesImage writes a docker-archive of one layer holding files, /etc/passwd, /etc/group
// and /tmp, whose entrypoint is entry.
func writeFilesImage(ref, out, entry string, files []imageFile) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
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
	dirs := map[string]bool{}
	mkdirs := func(p string) error {
		var parents []string
		for d := filepath.Dir(p); d != "." && d != "/" && !dirs[d]; d = filepath.Dir(d) {
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			dirs[parents[i]] = true
			if err := hdr(&tar.Header{Name: parents[i] + "/", Mode: 0o755, Typeflag: tar.TypeDir}, nil); err != nil {
				return err
			}
		}
		return nil
	}
	dirs["tmp"] = true
	if err := hdr(&tar.Header{Name: "tmp/", Mode: 0o1777, Typeflag: tar.TypeDir}, nil); err != nil {
		return err
	}
	etc := map[string]string{
		"etc/group":  "root:x:0:\nnonroot:x:65532:\n",
		"etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
	}
	for _, f := range []string{"etc/group", "etc/passwd"} {
		if err := mkdirs(f); err != nil {
			return err
		}
		if err := hdr(&tar.Header{Name: f, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(etc[f]))}, []byte(etc[f])); err != nil {
			return err
		}
	}
	for _, f := range files {
		if err := mkdirs(f.path); err != nil {
			return err
		}
		if f.host == "" {
			if err := hdr(&tar.Header{Name: f.path, Mode: 0o777, Typeflag: tar.TypeSymlink, Linkname: f.link}, nil); err != nil {
				return err
			}
			continue
		}
		b, err := os.ReadFile(f.host)
		if err != nil {
			return err
		}
		if err := hdr(&tar.Header{Name: f.path, Mode: 0o755, Typeflag: tar.TypeReg, Size: int64(len(b))}, b); err != nil {
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
	cf.Config.Entrypoint = []string{entry}
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/usr/sbin:/sbin:/bin"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	if err := tarball.WriteToFile(out, tag, img); err != nil {
		return fmt.Errorf("node: image %s: %w", ref, err)
	}
	return nil
}

// iptablesNames are the commands Istio's node agent runs (tools/istio-iptables: it picks the
// legacy or nft variant the host's rules use), all of them xtables' multi-call binaries.
var iptablesNames = map[string][]string{
	"xtables-nft-multi": {"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore",
		"iptables-nft", "iptables-nft-save", "iptables-nft-restore", "ip6tables-nft", "ip6tables-nft-save", "ip6tables-nft-restore"},
	"xtables-legacy-multi": {"iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore",
		"ip6tables-legacy", "ip6tables-legacy-save", "ip6tables-legacy-restore"},
}

// writeInstallCNIImage writes Istio's install-cni image: install-cni (the entrypoint, as the
// chart's command), the istio-cni plugin in /opt/cni/bin (which install-cni copies to the
// node), and Debian's iptables (both backends, their extensions and shared libraries, copied
// from this host, as Istio's image carries its distribution's).
func writeInstallCNIImage(bin, out string) error {
	files := []imageFile{
		{path: "usr/local/bin/install-cni", host: filepath.Join(bin, "install-cni")},
		{path: "opt/cni/bin/istio-cni", host: filepath.Join(bin, "istio-cni")},
	}
	libs := map[string]bool{}
	for multi, names := range iptablesNames {
		host := "/usr/sbin/" + multi
		files = append(files, imageFile{path: "usr/sbin/" + multi, host: host})
		for _, n := range names {
			files = append(files, imageFile{path: "usr/sbin/" + n, link: multi})
		}
		if err := sharedLibs(host, libs); err != nil {
			return err
		}
	}
	exts, err := filepath.Glob("/usr/lib/x86_64-linux-gnu/xtables/*.so")
	if err != nil || len(exts) == 0 {
		return fmt.Errorf("node: no iptables extensions in /usr/lib/x86_64-linux-gnu/xtables (apt-get install iptables)")
	}
	for _, e := range exts {
		files = append(files, imageFile{path: strings.TrimPrefix(e, "/"), host: e})
		if err := sharedLibs(e, libs); err != nil {
			return err
		}
	}
	for l := range libs {
		files = append(files, imageFile{path: strings.TrimPrefix(l, "/"), host: l})
	}
	return writeFilesImage(InstallCNIImage, out, "/usr/local/bin/install-cni", files)
}

// sharedLibs adds the shared libraries an ELF file loads (ldd), the loader among them, by the
// paths it loads them from.
func sharedLibs(path string, libs map[string]bool) error {
	out, err := exec.Command("ldd", path).Output()
	if err != nil {
		return fmt.Errorf("node: ldd %s: %w", path, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				libs[f] = true
			}
		}
	}
	return nil
}
