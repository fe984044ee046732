package hbone

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Writing. Whoever holds wmu writes; unlockWrite writes the queued control frames before it
// lets go, and looks again after letting go, so a queued frame is always written by the
// holder of wmu at the time it was queued, or by the next one. The read loop queues with
// queueAsync, which never waits for wmu: when nobody is about to write, it starts one goroutine
// that waits for wmu and writes (c.kicking says one is started and has not yet taken wmu, so a
// flood of frames from the peer starts at most one goroutine at a time, not one per frame).
// A peer that sends frames we must answer without reading the answers fills the queue: at
// local.maxCtrl frames the connection is closed (x/net's maxQueuedControlFrames), and a socket
// write that makes no progress for the write timeout fails (gatherConn), which closes it too.

// queue adds a control frame and writes it unless a writer holds wmu (that writer then
// writes it before letting go). Not for the read loop: see queueAsync.
func (c *h2Conn) queue(f h2Ctrl) {
	if ok, _ := c.push(f, false); ok && c.wmu.TryLock() {
		c.unlockWrite()
	}
}

// queueAsync is queue for the read loop, which must never wait on the socket: when no writer
// goroutine is pending, it starts one.
func (c *h2Conn) queueAsync(f h2Ctrl) {
	if ok, start := c.push(f, true); ok && start {
		go c.writeQueued()
	}
}

// push appends f to the control queue unless the connection is closed; it closes the
// connection when the queue is full. With async, start reports that no writer goroutine is
// pending, and marks one as pending: the caller must start it.
func (c *h2Conn) push(f h2Ctrl, async bool) (ok, start bool) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false, false
	}
	if len(c.ctrl) >= c.local.maxCtrl {
		c.mu.Unlock()
		c.log.Debug("hbone HTTP/2 connection closed", "error", errCtrlFlood.Error(), "queued", c.local.maxCtrl)
		c.closeWithError(errCtrlFlood)
		return false, false
	}
	c.ctrl = append(c.ctrl, f)
	if async {
		start = !c.kicking
		c.kicking = true
	}
	c.mu.Unlock()
	return true, start
}

// writeQueued takes wmu and writes the queued control frames. Frames queued before it cleared
// c.kicking are written by it; later ones start another writeQueued, which waits for this one.
func (c *h2Conn) writeQueued() {
	c.wmu.Lock()
	c.mu.Lock()
	c.kicking = false
	c.mu.Unlock()
	c.unlockWrite()
}

// unlockWrite writes the queued control frames, flushes, and releases wmu. A frame queued
// while it released is written by taking wmu again, so none is left behind.
func (c *h2Conn) unlockWrite() {
	for {
		c.mu.Lock()
		ctrl := c.ctrl
		c.ctrl = nil
		c.mu.Unlock()
		for _, f := range ctrl {
			c.writeCtrl(f)
		}
		err := c.bw.Flush()
		c.wmu.Unlock()
		if err != nil {
			c.closeWithError(err)
			return
		}
		c.mu.Lock()
		more := len(c.ctrl) > 0 && !c.closed
		c.mu.Unlock()
		if !more || !c.wmu.TryLock() {
			return
		}
	}
}

func (c *h2Conn) writeCtrl(f h2Ctrl) {
	switch f.typ {
	case http2.FrameSettings:
		c.fw.WriteSettingsAck()
	case http2.FramePing:
		c.fw.WritePing(f.ack, f.ping)
	case http2.FrameRSTStream:
		c.fw.WriteRSTStream(f.id, http2.ErrCode(f.val))
	case http2.FrameWindowUpdate:
		c.fw.WriteWindowUpdate(f.id, f.val)
	case http2.FrameGoAway:
		c.fw.WriteGoAway(f.id, http2.ErrCode(f.val), nil)
	}
}

// giveBack returns n bytes of the connection's receive window, with a WINDOW_UPDATE once
// half the window is pending. fromLoop says the read loop is the caller.
func (c *h2Conn) giveBack(n int64, fromLoop bool) {
	c.mu.Lock()
	c.recvPending += n
	inc := int64(0)
	if c.recvPending >= int64(c.local.connWindow)/2 {
		inc = c.recvPending
		c.recvAvail += inc
		c.recvPending = 0
	}
	c.mu.Unlock()
	if inc > 0 {
		c.send(h2Ctrl{typ: http2.FrameWindowUpdate, val: uint32(inc)}, fromLoop)
	}
}

// send queues f, from the read loop or not.
func (c *h2Conn) send(f h2Ctrl, fromLoop bool) {
	if fromLoop {
		c.queueAsync(f)
	} else {
		c.queue(f)
	}
}

// reserve promises the caller a new stream (client): false when the connection is closing,
// has been told to go away, has run out of stream IDs, or the server's limit is reached.
func (c *h2Conn) reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.goAway || c.nextID+2*uint32(c.reserved) > h2MaxStreamID {
		return false
	}
	if c.peer.maxStreams > 0 && uint32(len(c.streams)+c.reserved) >= c.peer.maxStreams {
		return false
	}
	c.reserved++
	return true
}

// openStream opens a reserved stream with a HEADERS frame carrying fields (client).
func (c *h2Conn) openStream(fields []hpack.HeaderField) (*h2Stream, error) {
	c.wmu.Lock()
	c.mu.Lock()
	c.reserved--
	if c.closed || c.goAway {
		err := c.closedErr()
		c.maybeIdle()
		c.mu.Unlock()
		c.unlockWrite()
		return nil, err
	}
	s := c.newStream(c.nextID)
	c.nextID += 2
	c.streams[s.id] = s
	c.mu.Unlock()
	err := c.writeHeaders(s.id, fields, false)
	c.unlockWrite()
	if err != nil {
		c.closeWithError(err)
		return nil, err
	}
	return s, nil
}

// closedErr is the error streams see once the connection is closed or going away; mu held.
func (c *h2Conn) closedErr() error {
	if c.err != nil {
		return c.err
	}
	if c.goAway {
		return errRefused
	}
	return errConnClosed
}

// writeHeaders encodes fields and writes them as HEADERS and CONTINUATION frames; wmu held.
func (c *h2Conn) writeHeaders(id uint32, fields []hpack.HeaderField, end bool) error {
	c.mu.Lock()
	max := int(c.peer.maxFrame)
	tableSize := c.peer.tableSize
	c.peer.tableSize = nil
	c.mu.Unlock()
	if tableSize != nil {
		c.henc.SetMaxDynamicTableSizeLimit(*tableSize)
	}
	c.hbuf.Reset()
	for _, f := range fields {
		c.henc.WriteField(f)
	}
	block := c.hbuf.Bytes()
	for first := true; first || len(block) > 0; first = false {
		frag := block[:min(len(block), max)]
		block = block[len(frag):]
		var err error
		if first {
			err = c.fw.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(block) == 0})
		} else {
			err = c.fw.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// resetStream ends stream id with err: when code is not 0, RST_STREAM with it is sent. It is
// called by the read loop.
func (c *h2Conn) resetStream(id uint32, code http2.ErrCode, err error) {
	c.mu.Lock()
	s := c.streams[id]
	c.mu.Unlock()
	if code != 0 {
		c.queueAsync(h2Ctrl{typ: http2.FrameRSTStream, id: id, val: uint32(code)})
	}
	if s != nil {
		s.abort(err)
	}
}

// removeStream forgets a finished stream; a draining or idle connection may then close.
func (c *h2Conn) removeStream(s *h2Stream) {
	c.mu.Lock()
	if c.streams[s.id] == s {
		delete(c.streams, s.id)
	}
	c.sendable.Broadcast()
	c.maybeIdle()
	c.mu.Unlock()
	c.closeIfDrained()
}

// maybeIdle arms the idle close of a connection left without streams; mu held.
func (c *h2Conn) maybeIdle() {
	if c.local.idle <= 0 || c.closed || len(c.streams) > 0 || c.reserved > 0 {
		return
	}
	c.idleSince = time.Now()
	if c.idleTimer == nil {
		c.idleTimer = time.AfterFunc(c.local.idle, c.idleCheck)
	} else {
		c.idleTimer.Reset(c.local.idle)
	}
}

// idleCheck closes the connection if it has had no stream since the timer was armed: a client
// closes it, a server sends GOAWAY first (as x/net's IdleTimeout).
func (c *h2Conn) idleCheck() {
	c.mu.Lock()
	idle := len(c.streams) == 0 && c.reserved == 0 && time.Since(c.idleSince) >= c.local.idle
	c.mu.Unlock()
	switch {
	case !idle:
	case c.client:
		c.closeWithError(errIdle)
	default:
		c.log.Debug("hbone idle connection closed", "idle", c.local.idle.String())
		c.shutdown()
	}
}

// closeIfDrained closes a connection that is going away once its last stream is done; it
// reports whether it did.
func (c *h2Conn) closeIfDrained() bool {
	c.mu.Lock()
	drained := c.goAway && len(c.streams) == 0 && !c.closed
	c.mu.Unlock()
	if drained {
		c.closeWithError(nil)
	}
	return drained
}

// shutdown sends GOAWAY (server): the streams already opened finish, later ones are refused,
// and the connection closes after its last stream.
func (c *h2Conn) shutdown() {
	c.mu.Lock()
	if c.goAway || c.closed {
		c.mu.Unlock()
		return
	}
	c.goAway = true
	last := c.lastPeerID
	c.mu.Unlock()
	c.queue(h2Ctrl{typ: http2.FrameGoAway, id: last, val: uint32(http2.ErrCodeNo)})
	c.closeIfDrained()
}

// fail sends GOAWAY with code and closes the connection. It runs on the read loop, which may
// now wait on the socket (for a bounded time): the GOAWAY is written, then what the peer still
// sends is read and dropped for a moment before closing, because closing a socket with unread
// bytes makes the kernel reset it, and a reset discards the GOAWAY at the peer.
func (c *h2Conn) fail(code http2.ErrCode, err error) {
	c.log.Debug("hbone HTTP/2 connection error", "code", code.String(), "error", err)
	c.mu.Lock()
	last := c.lastPeerID
	c.mu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(failLinger))
	c.queue(h2Ctrl{typ: http2.FrameGoAway, id: last, val: uint32(code)})
	c.lingerClose(err)
}

// lingerClose reads and drops what the peer sends for up to failLinger, then closes.
func (c *h2Conn) lingerClose(err error) {
	c.nc.SetReadDeadline(time.Now().Add(failLinger))
	io.Copy(io.Discard, c.nc)
	c.closeWithError(err)
}

// failLinger bounds how long a connection that failed lingers to deliver its GOAWAY.
const failLinger = time.Second

// closeWithError closes the connection; its streams end with err (errConnClosed when nil).
func (c *h2Conn) closeWithError(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	if err == nil {
		err = errConnClosed
	} else if !errors.Is(err, errConnClosed) {
		err = fmt.Errorf("%w: %w", errConnClosed, err) // never a bare io.EOF: streams must not end cleanly
	}
	c.err = err
	streams := make([]*h2Stream, 0, len(c.streams))
	for _, s := range c.streams {
		streams = append(streams, s)
	}
	clear(c.streams)
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	c.sendable.Broadcast()
	c.mu.Unlock()
	if c.onClose != nil {
		c.onClose(err)
	}
	for _, s := range streams {
		s.abort(err)
	}
	// Queued frames (GOAWAY) go out if the socket takes them; a TLS close_notify can block on
	// a peer that stopped reading, so the TCP connection is closed under it after a moment.
	t := time.AfterFunc(250*time.Millisecond, func() { c.raw.Close() })
	if c.wmu.TryLock() {
		c.unlockWrite()
	}
	c.nc.Close()
	t.Stop()
	c.raw.Close()
}

// armTimer schedules the next keep-alive check; mu held.
func (c *h2Conn) armTimer() {
	if c.local.pingEvery <= 0 || c.closed {
		return
	}
	d := c.local.pingEvery
	if !c.pingSent.IsZero() {
		d = c.local.pingTimeout
	}
	if c.timer == nil {
		c.timer = time.AfterFunc(d, c.keepalive)
		return
	}
	c.timer.Reset(d)
}

// keepalive sends a PING when nothing was read since the last check, and closes the
// connection when the last PING went unanswered.
func (c *h2Conn) keepalive() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if !c.pingSent.IsZero() && time.Since(c.pingSent) >= c.local.pingTimeout {
		c.mu.Unlock()
		c.closeWithError(errPingTimeout)
		return
	}
	seen := c.framesRead.Load()
	send := seen == c.framesSeen && c.pingSent.IsZero()
	c.framesSeen = seen
	if send {
		rand.Read(c.pingData[:])
		c.pingSent = time.Now()
	}
	data := c.pingData
	c.armTimer()
	c.mu.Unlock()
	if send {
		c.queue(h2Ctrl{typ: http2.FramePing, ping: data})
	}
}
