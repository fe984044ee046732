// Package files is the Source that reads the mesh from folders of Kubernetes YAML and watches them for changes.
package files

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/xdsserver/kubeobj"
	"github.com/goambient/goambient/xdsserver/model"
	"github.com/goambient/goambient/xdsserver/source"
)

// DefaultInterval is how often the folders are looked at for changes.
const DefaultInterval = 500 * time.Millisecond

// DefaultMaxFileSize is the largest file read when Options.MaxFileSize is zero: 16 MiB, room
// for a mesh of about 20,000 pods written as plain manifests.
const DefaultMaxFileSize = 16 << 20

// Options configure a files Source.
type Options struct {
	Paths    []string      // folders (read recursively) or files; .yaml, .yml and .json files are read
	Interval time.Duration // how often to look for changes; DefaultInterval when zero
	Model    model.Config  // how to build the mesh; model.DefaultConfig() suits a folder of YAML
	Logger   *slog.Logger  // nil: no logs
	// MaxFileSize is the largest file read, in bytes (DefaultMaxFileSize when zero): a larger
	// file is reported once and skipped, keeping its previous objects.
	MaxFileSize int64
	// MeshConfig is a mesh config file (istiod's --meshConfig, the MeshConfig message in YAML),
	// read as the `istio` ConfigMap of the root namespace; "" for none.
	MeshConfig string
}

// Source reads folders of YAML: every Namespace, ServiceAccount, Service, Pod, EndpointSlice,
// Gateway, GatewayClass, AuthorizationPolicy and PeerAuthentication in them, in the order of
// their paths (a later file overrides an object an earlier one defines).
//
// It polls: a file whose size or modification time changed, or was modified in the last
// moments, is read again, and the mesh is rebuilt when some file's content changed, appeared or
// disappeared. A bad object is reported and left out. A file that cannot be read, is larger
// than Options.MaxFileSize, or is not valid YAML as a whole (a file being written), keeps the
// objects it had before, so a half-written file never empties the mesh. A broken file is
// parsed and reported once per content (its SHA-256 is remembered), not once per poll.
type Source struct {
	opts  Options
	log   *slog.Logger
	files map[string]*file // by path
	now   func() time.Time
	last  *model.Mesh // the last mesh built (its valid routing objects outlive invalid edits)
	mesh  meshFile    // the mesh config file (meshconfig.go)
}

type file struct {
	modTime time.Time // of the last look that got the content, or found it too large
	size    int64
	looked  bool              // modTime and size are those of the content the file has
	sum     [sha256.Size]byte // of the last good content
	set     *kubeobj.Set      // the objects of the last good read (nil: none yet)
	errs    []error           // their problems
	broken  []error           // why the last read failed (nil: it did not)
	// badSum is the content that failed to parse (when badParsed): it is not parsed again.
	badSum    [sha256.Size]byte
	badParsed bool
}

// New returns a Source for the options.
func New(opts Options) *Source {
	opts.Interval = cmp.Or(opts.Interval, DefaultInterval)
	opts.MaxFileSize = cmp.Or(opts.MaxFileSize, DefaultMaxFileSize)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{opts: opts, log: log, files: map[string]*file{}, now: time.Now}
}

// Run pushes the mesh, then a new one after each change, until ctx is done.
func (s *Source) Run(ctx context.Context, push func(*model.Mesh)) error {
	m, err := s.Load()
	if err != nil {
		return err
	}
	push(m)
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if s.poll() {
				m, err := s.build()
				if err != nil {
					return err
				}
				push(m)
			}
		}
	}
}

// Load reads the folders once and returns the mesh (Run calls it first). It fails only when
// the options are unusable.
func (s *Source) Load() (*model.Mesh, error) {
	if len(s.opts.Paths) == 0 {
		return nil, errors.New("files source: no path to read")
	}
	if err := s.opts.Model.WithDefaults().Validate(); err != nil {
		return nil, fmt.Errorf("files source: %w", err)
	}
	s.poll()
	return s.build()
}

// recent is how long after a write a file is read again even if its size and modification
// time look unchanged (a rewrite within the file system's timestamp granularity).
const recent = 2 * time.Second

// poll looks at the files and reads the changed ones. It reports whether the mesh must be
// rebuilt.
func (s *Source) poll() bool {
	changed := false
	seen := map[string]bool{}
	for _, root := range s.opts.Paths {
		paths, err := policies.ConfigFiles(root)
		if err != nil {
			// Keep what was read under this path before (a folder being replaced).
			for p := range s.files {
				if under(p, root) {
					seen[p] = true
				}
			}
			s.log.Warn("cannot list configuration path; keeping its previous objects", "path", root, "error", err)
			continue
		}
		for _, p := range paths {
			seen[p] = true
			if s.read(p) {
				changed = true
			}
		}
	}
	for p := range s.files {
		if !seen[p] {
			delete(s.files, p)
			s.log.Info("configuration file removed", "path", p)
			changed = true
		}
	}
	if s.pollMeshConfig() {
		changed = true
	}
	return changed
}

// read looks at one file; it reports whether what the file contributes changed.
func (s *Source) read(path string) bool {
	f := s.files[path]
	if f == nil {
		f = &file{}
		s.files[path] = f
	}
	info, err := os.Stat(path)
	if err == nil && f.looked && info.ModTime().Equal(f.modTime) && info.Size() == f.size && s.now().Sub(f.modTime) > recent {
		return false
	}
	f.looked = false // until the content is read (an error is retried at the next poll)
	if err != nil {
		return s.fail(path, f, []error{fmt.Errorf("%s: cannot read: %w", path, err)}, false)
	}
	if info.Size() > s.opts.MaxFileSize {
		f.modTime, f.size, f.looked = info.ModTime(), info.Size(), true
		return s.fail(path, f, []error{s.tooLarge(path, info.Size())}, false)
	}
	data, err := readAtMost(path, s.opts.MaxFileSize)
	if errors.Is(err, errTooLarge) {
		return s.fail(path, f, []error{s.tooLarge(path, int64(len(data)))}, false) // grew since Stat: look again
	}
	if err != nil {
		return s.fail(path, f, []error{fmt.Errorf("%s: cannot read: %w", path, err)}, false)
	}
	f.modTime, f.size, f.looked = info.ModTime(), info.Size(), true
	sum := sha256.Sum256(data)
	switch {
	case f.set != nil && sum == f.sum:
		// The last good content (again): its objects are those of f.set.
		was := f.broken
		f.broken, f.badParsed = nil, false
		return was != nil
	case f.broken != nil && f.badParsed && sum == f.badSum:
		return false // the same broken content: reported when it was parsed
	}
	start := time.Now()
	set, problems, err := kubeobj.Load(data, path)
	s.log.Debug("configuration file parsed", "path", path, "bytes", len(data), "duration", time.Since(start))
	if err != nil {
		f.badSum = sum
		return s.fail(path, f, unjoin(err), true)
	}
	f.sum, f.set, f.errs, f.broken, f.badParsed = sum, set, problems, nil, false
	s.log.Info("configuration file read", "path", path, "objects", set.Len(), "problems", len(problems))
	return true
}

var errTooLarge = errors.New("file too large")

// readAtMost reads a file of at most limit bytes; a longer one returns errTooLarge with the
// first limit+1 bytes.
func readAtMost(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return data, errTooLarge
	}
	return data, nil
}

func (s *Source) tooLarge(path string, size int64) error {
	return fmt.Errorf("%s: %d bytes, more than the %d bytes a configuration file may have (files.Options.MaxFileSize, xdsserver --max-config-file-size)",
		path, size, s.opts.MaxFileSize)
}

// fail records why a file could not be used; its previous objects stay. It is logged when the
// reasons changed, or when parsed is set (new content that failed to parse), so a broken file
// is reported once per change, not once per poll. It reports whether the reasons changed.
func (s *Source) fail(path string, f *file, errs []error, parsed bool) bool {
	suffix := "; the file is skipped until it is fixed"
	if f.set != nil {
		suffix = "; its previous objects are kept until it is fixed"
	}
	var broken []error
	for _, e := range errs {
		var pe *policies.Error
		if errors.As(e, &pe) {
			c := *pe
			c.Reason += suffix
			broken = append(broken, &c)
			continue
		}
		broken = append(broken, fmt.Errorf("%w%s", e, suffix))
	}
	if len(broken) == 0 {
		broken = []error{fmt.Errorf("%s: not valid YAML%s", path, suffix)}
	}
	changed := !sameErrors(f.broken, broken)
	f.broken, f.badParsed = broken, parsed
	if changed || parsed {
		for _, e := range broken {
			s.log.Warn("configuration file unusable", "error", e)
		}
	}
	return changed
}

// build makes the mesh from every file's last good objects.
func (s *Source) build() (*model.Mesh, error) {
	all := &kubeobj.Set{}
	var problems []error
	for _, p := range slices.Sorted(maps.Keys(s.files)) {
		f := s.files[p]
		all.Append(f.set)
		problems = append(problems, f.broken...)
		problems = append(problems, f.errs...)
	}
	if cm := s.meshConfigMap(); cm != nil {
		all.ConfigMaps = append(all.ConfigMaps, cm)
	}
	cfg := s.opts.Model
	cfg.Previous = s.last // a routing object made invalid keeps its last valid version
	m, err := model.Build(all, cfg)
	if err != nil {
		return nil, fmt.Errorf("files source: %w", err)
	}
	s.last = m
	m.Errors = append(problems, m.Errors...)
	slices.SortStableFunc(m.Errors, func(a, b error) int {
		x, y := originOf(a), originOf(b)
		return cmp.Or(cmp.Compare(x.File, y.File), cmp.Compare(x.Doc, y.Doc))
	})
	for _, e := range m.Errors {
		s.log.Warn("configuration error; object left out", "error", e)
	}
	for _, e := range m.Warnings {
		s.log.Info("configuration remark", "warning", e)
	}
	s.log.Info("mesh built", "files", len(s.files), "workloads", len(m.Workloads), "services", len(m.Services),
		"waypoints", len(m.Waypoints), "policies", len(m.Policies.AuthorizationPolicies)+len(m.Policies.PeerAuthentications), "errors", len(m.Errors))
	return m, nil
}

func under(path, root string) bool {
	return path == root || strings.HasPrefix(path, strings.TrimSuffix(root, string(filepath.Separator))+string(filepath.Separator))
}

func unjoin(err error) []error {
	var out []error
	var walk func(error)
	walk = func(e error) {
		switch x := e.(type) {
		case interface{ Unwrap() []error }:
			for _, c := range x.Unwrap() {
				walk(c)
			}
		case *policies.Error:
			out = append(out, x)
		default:
			if e != kubeobj.ErrSyntax {
				out = append(out, e)
			}
		}
	}
	walk(err)
	return out
}

func sameErrors(a, b []error) bool {
	return slices.EqualFunc(a, b, func(x, y error) bool { return x.Error() == y.Error() })
}

func originOf(err error) policies.Origin {
	var pe *policies.Error
	if errors.As(err, &pe) {
		return pe.Origin
	}
	return policies.Origin{}
}

var _ source.Source = (*Source)(nil)
