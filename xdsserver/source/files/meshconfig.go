package files

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"

	"github.com/goambient/goambient/policies"
	"github.com/goambient/goambient/policies/meshconfig"
	"github.com/goambient/goambient/xdsserver/kubeobj"
)

// meshFile is the mesh config file (Options.MeshConfig) as last read.
type meshFile struct {
	data []byte
	sum  [sha256.Size]byte
	read bool
}

// pollMeshConfig reads the mesh config file; it reports whether its content changed. A file
// that cannot be read or is too large keeps the previous content (logged).
func (s *Source) pollMeshConfig() bool {
	path := s.opts.MeshConfig
	if path == "" {
		return false
	}
	f, err := os.Open(path)
	var data []byte
	if err == nil {
		data, err = io.ReadAll(io.LimitReader(f, s.opts.MaxFileSize+1))
		f.Close()
		if err == nil && int64(len(data)) > s.opts.MaxFileSize {
			err = fmt.Errorf("larger than %d bytes", s.opts.MaxFileSize)
		}
	}
	if err != nil {
		s.log.Warn("mesh config file not read; keeping the previous one", "path", path, "error", err)
		return false
	}
	sum := sha256.Sum256(data)
	if s.mesh.read && sum == s.mesh.sum {
		return false
	}
	s.mesh = meshFile{data: data, sum: sum, read: true}
	s.log.Info("mesh config file read", "path", path)
	return true
}

// meshConfigMap is the mesh config file as the `istio` ConfigMap of the root namespace, which
// the model reads (it comes after the folders' objects, so it wins over one found there).
func (s *Source) meshConfigMap() *kubeobj.ConfigMap {
	if !s.mesh.read {
		return nil
	}
	cm := &kubeobj.ConfigMap{Data: map[string]string{meshconfig.ConfigMapKey: string(s.mesh.data)}, Origin: policies.Origin{File: s.opts.MeshConfig}}
	cm.Metadata.Name = kubeobj.MeshConfigMapName
	cm.Metadata.Namespace = s.opts.Model.WithDefaults().RootNamespace
	return cm
}
