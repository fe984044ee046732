package netns

import (
	"context"
	"net"
)

// ListenPacket opens a packet socket (UDP) inside the namespace: the in-pod DNS proxy's.
func (n *NS) ListenPacket(ctx context.Context, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.Do(func() error {
		var err error
		pc, err = (&net.ListenConfig{}).ListenPacket(ctx, network, addr)
		return err
	})
	return pc, err
}
