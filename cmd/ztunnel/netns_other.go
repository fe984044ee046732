//go:build !linux

package main

import (
	"errors"
	"net/netip"

	"github.com/goambient/goambient/ztunnel/proxy"
)

// podNetns is the --pod-netns flag; namespace mode is Linux-only.
type podNetns map[netip.Addr]string

func (m *podNetns) String() string { return "" }

func (m *podNetns) Set(string) error { return errors.New("namespace mode (--pod-netns) is Linux-only") }

func (m podNetns) open() (proxy.PodNetworks, func(), error) { return nil, func() {}, nil }
