// Package source defines how the control plane learns the mesh: a Source pushes a new model each time its configuration changes.
package source

import (
	"context"

	"github.com/goambient/goambient/xdsserver/model"
)

// Source watches some configuration (a folder of YAML, a Kubernetes cluster) and pushes the
// mesh it describes: once when it starts, then after every change. Push is called from Run's
// goroutine, one call at a time, and must not keep the Mesh's objects for modification (a Mesh
// is immutable). Run returns when ctx is done (nil), or when the source cannot work at all.
// A bad object never stops a source: it is reported in Mesh.Errors and left out.
type Source interface {
	Run(ctx context.Context, push func(*model.Mesh)) error
}

// Func adapts a function to a Source.
type Func func(ctx context.Context, push func(*model.Mesh)) error

// Run calls f.
func (f Func) Run(ctx context.Context, push func(*model.Mesh)) error { return f(ctx, push) }

// Static is a Source that pushes one mesh and waits for ctx to be done (for tests and one-shot
// tools).
func Static(m *model.Mesh) Source {
	return Func(func(ctx context.Context, push func(*model.Mesh)) error {
		push(m)
		<-ctx.Done()
		return nil
	})
}
