//go:build !unix

package zds

import (
	"context"
	"errors"
)

// Run fails: ZDS needs unix SOCK_SEQPACKET sockets and fd passing.
func Run(context.Context, Config) error {
	return errors.New("zds: the node agent protocol needs unix sockets (Linux)")
}
