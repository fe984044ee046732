package netns

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFromFD: a received namespace fd becomes an NS with the namespace's own ID; any other
// fd is refused and closed.
func TestFromFD(t *testing.T) {
	byPath, err := Open("/proc/self/ns/net")
	if err != nil {
		t.Skipf("cannot open this process's namespace: %v", err)
	}
	defer byPath.Close()
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := FromFD(fd, "fd:test")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if ns.ID() == "" || ns.ID() != byPath.ID() {
		t.Errorf("ID of the same namespace: %q by fd, %q by path", ns.ID(), byPath.ID())
	}
	if ns.Path() != "fd:test" {
		t.Errorf("Path: %q", ns.Path())
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	pfd, err := unix.Dup(int(r.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if _, err := FromFD(pfd, "fd:pipe"); err == nil {
		t.Fatal("FromFD accepted a pipe")
	}
	if _, err := unix.FcntlInt(uintptr(pfd), unix.F_GETFD, 0); err == nil {
		t.Error("FromFD left the refused fd open")
	}
}
