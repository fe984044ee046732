//go:build unix

package zds

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"

	"github.com/goambient/goambient/ztunnel/netns"
	"github.com/goambient/goambient/ztunnel/proxy"
)

// Sizes of one datagram: requests are a few hundred bytes (the node agent reads acks into
// 1 KiB); room for a few fds so that extra ones are seen and closed, not truncated.
const (
	maxMessage = 64 << 10
	maxFDs     = 8
	// The node agent reads a response into 1 KiB and drops a truncated one: longer ack
	// errors are cut.
	maxAckError = 900
)

// Run connects to the node agent and serves its requests until ctx ends, reconnecting with
// exponential backoff whenever the connection cannot be made or is lost. It returns ctx's error.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Handler == nil {
		return errors.New("zds: Config.Handler is required")
	}
	cfg.Socket = cmp.Or(cfg.Socket, DefaultSocket)
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, 100*time.Millisecond)
	cfg.MaxBackoff = max(cmp.Or(cfg.MaxBackoff, 5*time.Second), cfg.MinBackoff)
	if cfg.OpenNetns == nil {
		cfg.OpenNetns = func(fd int, uid string) (proxy.Netns, error) { return netns.FromFD(fd, "zds:"+uid) }
	}
	log := cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler)).With("scope", "zds", "socket", cfg.Socket)
	backoff := cfg.MinBackoff
	for attempt := 1; ; attempt++ {
		hello, err := session(ctx, cfg, log)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if hello {
			backoff = cfg.MinBackoff // the node agent was there: start over quickly
		}
		log.Warn("node agent connection ended; reconnecting", "error", fmt.Sprint(err), "attempt", attempt, "backoff", backoff.String())
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, cfg.MaxBackoff)
	}
}

// session is one connection: hello, then requests until it fails. hello reports whether the
// hello was sent.
func session(ctx context.Context, cfg Config, log *slog.Logger) (hello bool, err error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", cfg.Socket)
	if err != nil {
		return false, err
	}
	conn := c.(*net.UnixConn)
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	b, err := proto.Marshal(&zdsapi.ZdsHello{Version: zdsapi.Version_V1})
	if err != nil {
		return false, err
	}
	if _, err := conn.Write(b); err != nil {
		return false, fmt.Errorf("zds: send hello: %w", err)
	}
	log.Info("connected to the node agent", "version", zdsapi.Version_V1.String())
	s := &agentConn{cfg: cfg, log: log, keep: map[string]bool{}}
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	for {
		n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return true, err
		}
		if n == 0 && oobn == 0 {
			return true, errors.New("zds: the node agent closed the connection")
		}
		fds, ferr := parseFDs(oob[:oobn])
		msg := s.handle(ctx, buf[:n], flags, fds, ferr)
		if len(msg) > maxAckError {
			msg = strings.ToValidUTF8(msg[:maxAckError], "") + "..."
		}
		ack, err := proto.Marshal(&zdsapi.WorkloadResponse{Payload: &zdsapi.WorkloadResponse_Ack{Ack: &zdsapi.Ack{Error: msg}}})
		if err != nil {
			return true, err
		}
		if _, err := conn.Write(ack); err != nil {
			return true, fmt.Errorf("zds: send ack: %w", err)
		}
	}
}

// parseFDs returns the fds of the SCM_RIGHTS messages in oob.
func parseFDs(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("ancillary data: %w", err)
	}
	var fds []int
	var errs []error
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			errs = append(errs, fmt.Errorf("ancillary data: unexpected control message level %d type %d", msgs[i].Header.Level, msgs[i].Header.Type))
			continue
		}
		if n := len(msgs[i].Data); n%4 != 0 {
			// unix.ParseUnixRights indexes past its slice on such a message (x/sys v0.49.0); the
			// kernel writes whole fds, but nothing here should panic on what a socket returns.
			errs = append(errs, fmt.Errorf("ancillary data: SCM_RIGHTS of %d bytes is not a list of 4-byte fds", n))
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("ancillary data: %w", err))
			continue
		}
		fds = append(fds, got...)
	}
	return fds, errors.Join(errs...)
}

// agentConn is the state of one connection: the uids sent before SnapshotSent.
type agentConn struct {
	cfg      Config
	log      *slog.Logger
	keep     map[string]bool
	snapshot bool // SnapshotSent received
}

// handle runs one request and returns its ack's error text ("" for success). It closes the
// fds it does not hand on.
func (s *agentConn) handle(ctx context.Context, data []byte, flags int, fds []int, fdErr error) string {
	used := -1
	defer func() {
		for i, fd := range fds {
			if i != used {
				unix.Close(fd)
			}
		}
	}()
	fail := func(err error) string {
		s.log.Error("request failed", "error", err.Error())
		return err.Error()
	}
	switch {
	case flags&unix.MSG_TRUNC != 0:
		return fail(fmt.Errorf("zds: WorkloadRequest: truncated (more than %d bytes)", maxMessage))
	case flags&unix.MSG_CTRUNC != 0:
		return fail(fmt.Errorf("zds: WorkloadRequest: ancillary data truncated (more than %d fds)", maxFDs))
	case fdErr != nil:
		return fail(fmt.Errorf("zds: WorkloadRequest: %w", fdErr))
	}
	var req zdsapi.WorkloadRequest
	if err := proto.Unmarshal(data, &req); err != nil {
		return fail(fmt.Errorf("zds: WorkloadRequest: %d bytes do not decode: %w", len(data), err))
	}
	switch pl := req.Payload.(type) {
	case *zdsapi.WorkloadRequest_Add:
		add := pl.Add
		uid, info := add.GetUid(), add.GetWorkloadInfo()
		switch {
		case uid == "":
			return fail(errors.New("zds: WorkloadRequest.add.uid is empty"))
		case info.GetName() == "" || info.GetNamespace() == "":
			return fail(fmt.Errorf("zds: WorkloadRequest.add (uid %s): workload_info.name and workload_info.namespace are required, got %q/%q", uid, info.GetNamespace(), info.GetName()))
		case len(fds) != 1:
			return fail(fmt.Errorf("zds: WorkloadRequest.add (uid %s): want the pod's network namespace as 1 fd, got %d", uid, len(fds)))
		}
		used = 0
		ns, err := s.cfg.OpenNetns(fds[0], uid)
		if err != nil {
			return fail(fmt.Errorf("zds: WorkloadRequest.add (uid %s): %w", uid, err))
		}
		if !s.snapshot {
			s.keep[uid] = true
		}
		s.log.Info("add pod", "uid", uid, "workload", info.GetNamespace()+"/"+info.GetName(), "service_account", info.GetServiceAccount(), "snapshot", !s.snapshot)
		if err := s.cfg.Handler.AddPod(ctx, uid, info.GetNamespace(), info.GetName(), ns); err != nil {
			return fail(err)
		}
	case *zdsapi.WorkloadRequest_Keep:
		uid := pl.Keep.GetUid()
		switch {
		case uid == "":
			return fail(errors.New("zds: WorkloadRequest.keep.uid is empty"))
		case s.snapshot:
			return fail(fmt.Errorf("zds: WorkloadRequest.keep (uid %s): only valid before snapshot_sent", uid))
		}
		s.keep[uid] = true
		s.log.Info("keep pod", "uid", uid)
	case *zdsapi.WorkloadRequest_Del:
		uid := pl.Del.GetUid()
		if uid == "" {
			return fail(errors.New("zds: WorkloadRequest.del.uid is empty"))
		}
		delete(s.keep, uid)
		s.log.Info("delete pod", "uid", uid)
		if err := s.cfg.Handler.DelPod(ctx, uid); err != nil {
			return fail(err)
		}
	case *zdsapi.WorkloadRequest_SnapshotSent:
		if s.snapshot {
			return fail(errors.New("zds: WorkloadRequest.snapshot_sent: received twice on one connection"))
		}
		s.snapshot = true
		s.log.Info("snapshot received", "pods", len(s.keep))
		if err := s.cfg.Handler.RetainPods(ctx, s.keep); err != nil {
			return fail(err)
		}
		s.keep = nil
	default:
		return fail(fmt.Errorf("zds: WorkloadRequest: no known payload (%d bytes)", len(data)))
	}
	if len(fds) > 0 && used < 0 {
		s.log.Warn("closed unexpected fds sent with a request", "count", strconv.Itoa(len(fds)))
	}
	return ""
}
