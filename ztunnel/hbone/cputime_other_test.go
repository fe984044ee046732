//go:build !unix

package hbone

import "time"

func processCPU() (time.Duration, bool) { return 0, false }
