//go:build unix

package zds

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"

	"github.com/goambient/goambient/ztunnel/proxy"
	"github.com/goambient/goambient/ztunnel/zds/zdstest"
)

// What a node agent sends, as hostile input: the ztunnel decodes each datagram and must never
// panic; a request it refuses gets an ack whose error says "zds: " and which message was bad.

// nopHandler accepts every change, like a proxy that has room for every pod.
type nopHandler struct{ pods map[string]bool }

func (h *nopHandler) AddPod(_ context.Context, uid, _, _ string, _ proxy.Netns) error {
	h.pods[uid] = true
	return nil
}

func (h *nopHandler) DelPod(_ context.Context, uid string) error {
	delete(h.pods, uid)
	return nil
}

func (h *nopHandler) RetainPods(_ context.Context, keep map[string]bool) error {
	for uid := range h.pods {
		if !keep[uid] {
			delete(h.pods, uid)
		}
	}
	return nil
}

// FuzzWorkloadRequest runs one connection's requests: data is a sequence of datagrams, each
// "len, meta, len bytes", meta saying how many fds came with it (bits 0-1; the fds are -1, so
// closing them is a no-op) and the recvmsg flags (bit 2 MSG_TRUNC, bit 3 MSG_CTRUNC).
func FuzzWorkloadRequest(f *testing.F) {
	datagram := func(m *zdsapi.WorkloadRequest, meta byte) []byte {
		b, err := proto.Marshal(m)
		if err != nil || len(b) > 255 {
			f.Fatal(err)
		}
		return append([]byte{byte(len(b)), meta}, b...)
	}
	join := func(ds ...[]byte) []byte { return bytes.Join(ds, nil) }
	f.Add(join(datagram(zdstest.Add("uid-1", "ns", "a", "sa"), 1), datagram(zdstest.Keep("uid-2"), 0),
		datagram(zdstest.SnapshotSent(), 0), datagram(zdstest.Del("uid-1"), 0)))
	f.Add(join(datagram(zdstest.SnapshotSent(), 0), datagram(zdstest.SnapshotSent(), 0), datagram(zdstest.Keep("late"), 2)))
	f.Add(join(datagram(zdstest.Add("", "", "", ""), 3), datagram(zdstest.Del(""), 4), datagram(&zdsapi.WorkloadRequest{}, 8)))
	f.Add([]byte{3, 0, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		h := &nopHandler{pods: map[string]bool{}}
		s := &agentConn{
			cfg: Config{Handler: h, OpenNetns: func(fd int, uid string) (proxy.Netns, error) { return nil, nil }},
			log: slog.New(slog.DiscardHandler), keep: map[string]bool{},
		}
		for len(data) >= 2 {
			n, meta := int(data[0]), data[1]
			data = data[2:]
			msg := data[:min(n, len(data))]
			data = data[len(msg):]
			fds := make([]int, meta&3)
			for i := range fds {
				fds[i] = -1
			}
			flags := 0
			if meta&4 != 0 {
				flags |= unix.MSG_TRUNC
			}
			if meta&8 != 0 {
				flags |= unix.MSG_CTRUNC
			}
			ack := s.handle(context.Background(), msg, flags, fds, nil)
			if ack != "" && (!strings.HasPrefix(ack, "zds: ") || !strings.Contains(ack, "WorkloadRequest")) {
				t.Errorf("ack error %q does not say which request was refused", ack)
			}
		}
	})
}

// FuzzParseFDs: the ancillary data of a datagram, whatever it holds, is parsed without panic.
// (The fds it returns are not closed: they are numbers from the input, not open files.)
func FuzzParseFDs(f *testing.F) {
	f.Add(unix.UnixRights(3, 4))
	f.Add(append(unix.UnixRights(5), unix.UnixRights(6, 7, 8)...))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, oob []byte) {
		if _, err := parseFDs(oob); err != nil && !strings.HasPrefix(err.Error(), "ancillary data: ") {
			t.Errorf("error %q does not say it is about the ancillary data", err)
		}
	})
}
