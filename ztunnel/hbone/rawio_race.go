//go:build race && linux

package hbone

import (
	"runtime"
	"unsafe"
)

// ioSync gives the race detector what syscall.Read and syscall.Write give it for their own
// calls: a write to a socket happens before the read that returns its bytes, for any pair of
// rawTCP connections in the process.
var ioSync int64

func raceWrote(p []byte) {
	if len(p) > 0 {
		runtime.RaceReadRange(unsafe.Pointer(&p[0]), len(p))
	}
	runtime.RaceReleaseMerge(unsafe.Pointer(&ioSync))
}

func raceRead(p []byte) {
	if len(p) > 0 {
		runtime.RaceWriteRange(unsafe.Pointer(&p[0]), len(p))
	}
	runtime.RaceAcquire(unsafe.Pointer(&ioSync))
}
