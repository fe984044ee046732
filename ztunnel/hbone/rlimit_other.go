//go:build !unix

package hbone

// defaultMaxConnections is DefaultMaxConnectionsCap where the open-file limit is not known.
func defaultMaxConnections() int { return DefaultMaxConnectionsCap }
