package source

import (
	"context"
	"testing"

	"github.com/goambient/goambient/xdsserver/model"

	_ "github.com/goambient/goambient/xdsserver/internal/golden" // defines -update
)

func TestStatic(t *testing.T) {
	want := &model.Mesh{ClusterID: "c"}
	ctx, cancel := context.WithCancel(context.Background())
	var got *model.Mesh
	done := make(chan error, 1)
	go func() { done <- Static(want).Run(ctx, func(m *model.Mesh) { got = m; cancel() }) }()
	if err := <-done; err != nil || got != want {
		t.Errorf("Run = %v, pushed %p, want %p", err, got, want)
	}
}
