package main

import (
	"net"
	"strings"
)

// defaultListen is <ip of the node id>:15008, or [::]:15008 when the node id has no IP.
func defaultListen(nodeID string) string {
	parts := strings.Split(nodeID, "~")
	if len(parts) == 4 && net.ParseIP(parts[1]) != nil {
		return net.JoinHostPort(parts[1], "15008")
	}
	return "[::]:15008"
}
