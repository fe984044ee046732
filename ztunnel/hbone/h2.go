package hbone

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// HBONE needs a small part of HTTP/2: CONNECT streams whose bodies are the tunnelled bytes.
// h2Conn speaks that part on one connection, client or server side, on x/net's Framer and
// hpack. One goroutine per connection reads frames and copies DATA into the streams' buffers;
// whoever writes (a relay writing stream bytes, a reader returning window) writes the frame
// itself under wmu. A byte from an application thus reaches the socket without changing
// goroutine, and a frame from the socket wakes exactly the goroutine that reads its stream:
// with x/net's server and transport, each frame crossed two or three goroutines, and the
// scheduler's wake-ups were 40% of the ztunnel's CPU at 1,000 requests per second.
//
// Frames the read loop must send (SETTINGS and PING acknowledgements, RST_STREAM, GOAWAY)
// and WINDOW_UPDATEs are queued and written by whoever holds wmu next, never by waiting for
// it: the read loop never blocks on the socket, so two peers whose send buffers are full still
// read each other's frames.

// h2Settings is what one side advertises, and the limits it applies to what it receives.
type h2Settings struct {
	maxStreams    uint32 // SETTINGS_MAX_CONCURRENT_STREAMS; 0: not sent (client)
	streamWindow  int32  // SETTINGS_INITIAL_WINDOW_SIZE
	connWindow    int32  // the connection's receive window (raised by a WINDOW_UPDATE)
	maxFrame      uint32 // SETTINGS_MAX_FRAME_SIZE
	maxHeaderList uint32 // SETTINGS_MAX_HEADER_LIST_SIZE
	// pingEvery and pingTimeout: a PING goes out once the connection has read nothing for
	// pingEvery (to 2×pingEvery: activity is sampled), and the connection is closed when it
	// is not answered within pingTimeout. pingEvery ≤ 0: no PINGs.
	pingEvery, pingTimeout time.Duration
	// idle closes a client connection that has had no stream for this long (≤ 0: never).
	idle time.Duration
}

// The initial values of RFC 9113 §6.5.2, in force until the peer's SETTINGS arrive.
const (
	h2DefaultWindow   = 65535
	h2DefaultMaxFrame = 16384
	h2MaxStreamID     = math.MaxInt32
)

var (
	// errRefused: the stream was not processed by the server (REFUSED_STREAM, or beyond a
	// GOAWAY's last stream): it is safe to open it again elsewhere.
	errRefused     = errors.New("hbone: stream refused by the server")
	errStreamReset = errors.New("hbone: stream reset")
	errConnClosed  = errors.New("hbone: HTTP/2 connection closed")
	errPingTimeout = errors.New("hbone: PING not answered")
	errIdle        = errors.New("hbone: idle connection closed")
	// errPeerDone: RST_STREAM with NO_ERROR, which a server sends after a complete answer to
	// stop the client sending (RFC 9113 §8.1): what was received stays readable.
	errPeerDone = errors.New("hbone: stream reset by the peer: NO_ERROR")
)

// h2Conn is one HTTP/2 connection carrying HBONE streams.
type h2Conn struct {
	log    *slog.Logger
	nc     net.Conn // what the frames are read from and written to (the TLS connection)
	raw    net.Conn // the TCP connection under it: closed directly when TLS's close hangs
	client bool
	local  h2Settings
	// onStream is called by the read loop for each new request stream (server); it must
	// not block.
	onStream func(*h2Stream, *http2.MetaHeadersFrame)
	// onClose is called once, after the connection is closed.
	onClose func(error)

	fr *http2.Framer // reads, by the read loop only

	wmu  sync.Mutex // held while frames are encoded and written
	bw   *bufio.Writer
	fw   *http2.Framer // writes into bw
	henc *hpack.Encoder
	hbuf bytes.Buffer

	mu         sync.Mutex
	sendable   sync.Cond // on mu: a send window grew, a stream slot freed, or the connection closed
	streams    map[uint32]*h2Stream
	ctrl       []h2Ctrl // frames for the next wmu holder to write
	nextID     uint32   // client: the next stream ID
	lastPeerID uint32   // server: the highest stream ID the client opened
	reserved   int      // client: slots promised to openStream callers
	peer       struct {
		maxStreams uint32
		window     int32
		maxFrame   uint32
		tableSize  *uint32 // SETTINGS_HEADER_TABLE_SIZE not yet applied to henc
	}
	sendWindow  int64 // the connection's send window
	recvAvail   int64 // what the peer may still send on the connection
	recvPending int64 // bytes consumed and not yet given back with WINDOW_UPDATE
	goAway      bool  // no new streams: GOAWAY received (client) or sent (server)
	closed      bool
	err         error
	pingData    [8]byte
	pingSent    time.Time   // zero: no PING outstanding
	idleSince   time.Time   // when the last stream of a client connection ended
	idleTimer   *time.Timer // closes a client connection idle for local.idle
	timer       *time.Timer // the keep-alive
	framesSeen  uint64      // framesRead at the last keep-alive check

	framesRead atomic.Uint64
}

// h2Ctrl is a queued control frame.
type h2Ctrl struct {
	typ  http2.FrameType
	id   uint32 // stream (RST_STREAM, WINDOW_UPDATE) or last stream (GOAWAY)
	val  uint32 // error code or window increment
	ack  bool   // SETTINGS ack, PING ack
	ping [8]byte
}

// newH2Conn prepares a connection over nc (raw is the TCP connection under it); run starts it.
func newH2Conn(log *slog.Logger, nc, raw net.Conn, client bool, local h2Settings) *h2Conn {
	c := &h2Conn{
		log:       log,
		nc:        nc,
		raw:       raw,
		client:    client,
		local:     local,
		streams:   make(map[uint32]*h2Stream),
		nextID:    1,
		recvAvail: h2DefaultWindow,
	}
	c.sendable.L = &c.mu
	c.peer.window = h2DefaultWindow
	c.peer.maxFrame = h2DefaultMaxFrame
	c.sendWindow = h2DefaultWindow
	c.bw = bufio.NewWriterSize(nc, 4<<10)
	c.fw = http2.NewFramer(c.bw, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.fr = http2.NewFramer(nil, nc)
	c.fr.SetMaxReadFrameSize(local.maxFrame)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = local.maxHeaderList
	c.fr.SetReuseFrames()
	return c
}

// start sends the connection preface (the client's magic string, SETTINGS and the connection
// window) and returns; the caller then runs readLoop.
func (c *h2Conn) start() error {
	settings := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: uint32(c.local.streamWindow)},
		{ID: http2.SettingMaxFrameSize, Val: c.local.maxFrame},
		{ID: http2.SettingMaxHeaderListSize, Val: c.local.maxHeaderList},
	}
	if c.client {
		settings = append([]http2.Setting{{ID: http2.SettingEnablePush, Val: 0}}, settings...)
	} else {
		settings = append([]http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: c.local.maxStreams}}, settings...)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.client {
		c.bw.WriteString(http2.ClientPreface)
	}
	c.fw.WriteSettings(settings...)
	if inc := int64(c.local.connWindow) - h2DefaultWindow; inc > 0 {
		c.fw.WriteWindowUpdate(0, uint32(inc))
		c.mu.Lock()
		c.recvAvail += inc
		c.mu.Unlock()
	}
	if err := c.bw.Flush(); err != nil {
		return err
	}
	c.mu.Lock()
	c.armTimer()
	c.mu.Unlock()
	return nil
}

// readPreface reads the client's magic string (server side).
func (c *h2Conn) readPreface() error {
	buf := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.nc, buf); err != nil {
		return fmt.Errorf("reading the HTTP/2 preface: %w", err)
	}
	if string(buf) != http2.ClientPreface {
		return errors.New("not an HTTP/2 connection preface")
	}
	return nil
}

// readLoop reads frames until the connection fails or closes, then closes it.
func (c *h2Conn) readLoop() {
	first := true
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code, errStreamReset)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.fail(http2.ErrCode(ce), fmt.Errorf("HTTP/2 protocol error from the peer: %v", c.frameError(err)))
				return
			}
			c.closeWithError(err)
			return
		}
		c.framesRead.Add(1)
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				c.fail(http2.ErrCodeProtocol, fmt.Errorf("first HTTP/2 frame is %s, not SETTINGS", f.Header().Type))
				return
			}
			first = false
		}
		var code http2.ErrCode
		switch f := f.(type) {
		case *http2.DataFrame:
			code, err = c.onData(f)
		case *http2.MetaHeadersFrame:
			code, err = c.onHeaders(f)
		case *http2.SettingsFrame:
			code, err = c.onSettings(f)
		case *http2.WindowUpdateFrame:
			code, err = c.onWindowUpdate(f)
		case *http2.PingFrame:
			c.onPing(f)
		case *http2.RSTStreamFrame:
			if !c.knownID(f.StreamID) {
				code, err = http2.ErrCodeProtocol, fmt.Errorf("RST_STREAM on idle stream %d", f.StreamID)
				break
			}
			c.resetStream(f.StreamID, 0, streamResetError(f.ErrCode))
		case *http2.GoAwayFrame:
			if c.client && c.onGoAway(f) {
				return
			} // a client's GOAWAY only says it opens no more streams: nothing to do
		case *http2.PriorityFrame:
			if f.StreamDep == f.StreamID {
				c.queueAsync(h2Ctrl{typ: http2.FrameRSTStream, id: f.StreamID, val: uint32(http2.ErrCodeProtocol)})
				c.resetStream(f.StreamID, 0, errStreamReset)
			}
		case *http2.PushPromiseFrame:
			code, err = http2.ErrCodeProtocol, errors.New("PUSH_PROMISE with push disabled")
		default: // PRIORITY_UPDATE and unknown frames carry nothing for HBONE
		}
		if err != nil {
			c.fail(code, err)
			return
		}
	}
}

// frameError adds the Framer's detail to a protocol error, when it has one.
func (c *h2Conn) frameError(err error) error {
	if d := c.fr.ErrorDetail(); d != nil {
		return d
	}
	return err
}

func streamResetError(code http2.ErrCode) error {
	switch code {
	case http2.ErrCodeRefusedStream:
		return errRefused
	case http2.ErrCodeNo:
		return errPeerDone
	}
	return fmt.Errorf("%w by the peer: %s", errStreamReset, code)
}

// onData hands a DATA frame's payload to its stream. Flow control counts the whole frame
// (padding included); what cannot be delivered is given back to the connection window at once.
func (c *h2Conn) onData(f *http2.DataFrame) (http2.ErrCode, error) {
	size := int64(f.Length)
	data := f.Data()
	c.mu.Lock()
	if size > c.recvAvail {
		c.mu.Unlock()
		return http2.ErrCodeFlowControl, fmt.Errorf("peer sent %d bytes past the connection window", size-c.recvAvail)
	}
	c.recvAvail -= size
	s := c.streams[f.StreamID]
	c.mu.Unlock()
	if s == nil {
		c.giveBack(size, true)
		if !c.knownID(f.StreamID) {
			return http2.ErrCodeProtocol, fmt.Errorf("DATA on idle stream %d", f.StreamID)
		}
		// A stream that ended: dropped, its window given back, and reset (x/net does the same).
		c.queueAsync(h2Ctrl{typ: http2.FrameRSTStream, id: f.StreamID, val: uint32(http2.ErrCodeStreamClosed)})
		return 0, nil
	}
	code := s.deliver(data, size, f.StreamEnded())
	if pad := size - int64(len(data)); code == 0 && pad > 0 {
		c.giveBack(pad, true)
	}
	if code != 0 {
		c.giveBack(size, true)
		c.queueAsync(h2Ctrl{typ: http2.FrameRSTStream, id: s.id, val: uint32(code)})
		s.abort(errStreamReset)
	}
	return 0, nil
}

// knownID reports whether id was ever opened on this connection (by either side).
func (c *h2Conn) knownID(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client {
		return id%2 == 1 && id < c.nextID
	}
	return id%2 == 1 && id <= c.lastPeerID
}

// onHeaders starts a request stream (server), or delivers a response or trailers (client).
func (c *h2Conn) onHeaders(f *http2.MetaHeadersFrame) (http2.ErrCode, error) {
	id := f.StreamID
	c.mu.Lock()
	s := c.streams[id]
	c.mu.Unlock()
	if s != nil {
		s.onHeaders(f)
		return 0, nil
	}
	if c.client {
		if !c.knownID(id) {
			return http2.ErrCodeProtocol, fmt.Errorf("HEADERS on stream %d, which the client never opened", id)
		}
		return 0, nil // the answer to a stream that ended or was reset here
	}
	c.mu.Lock()
	if id%2 == 0 {
		c.mu.Unlock()
		return http2.ErrCodeProtocol, fmt.Errorf("HEADERS on server-initiated stream ID %d", id)
	}
	if id <= c.lastPeerID { // a stream already opened, and now closed (RFC 9113 §5.1)
		c.mu.Unlock()
		return http2.ErrCodeStreamClosed, fmt.Errorf("HEADERS on closed stream %d", id)
	}
	c.lastPeerID = id
	if f.HasPriority() && f.Priority.StreamDep == id {
		c.mu.Unlock()
		c.queueAsync(h2Ctrl{typ: http2.FrameRSTStream, id: id, val: uint32(http2.ErrCodeProtocol)})
		return 0, nil
	}
	if c.goAway || c.closed || uint32(len(c.streams)) >= c.local.maxStreams {
		c.mu.Unlock()
		c.queueAsync(h2Ctrl{typ: http2.FrameRSTStream, id: id, val: uint32(http2.ErrCodeRefusedStream)})
		return 0, nil
	}
	s = c.newStream(id)
	s.recvEnd = f.StreamEnded()
	s.eof = s.recvEnd
	c.streams[id] = s
	c.mu.Unlock()
	c.onStream(s, f)
	return 0, nil
}

// onSettings applies the peer's SETTINGS and acknowledges them.
func (c *h2Conn) onSettings(f *http2.SettingsFrame) (http2.ErrCode, error) {
	if f.IsAck() {
		return 0, nil
	}
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			return http2.ErrCode(ce), fmt.Errorf("invalid SETTINGS: %v", err)
		}
		return http2.ErrCodeProtocol, err
	}
	c.mu.Lock()
	f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			c.peer.maxStreams = s.Val
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - int64(c.peer.window)
			c.peer.window = int32(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
			}
		case http2.SettingMaxFrameSize:
			c.peer.maxFrame = s.Val
		case http2.SettingHeaderTableSize:
			v := s.Val
			c.peer.tableSize = &v // applied by the next HEADERS writer, which holds wmu
		}
		return nil
	})
	c.sendable.Broadcast()
	c.mu.Unlock()
	c.queueAsync(h2Ctrl{typ: http2.FrameSettings, ack: true})
	return 0, nil
}

func (c *h2Conn) onWindowUpdate(f *http2.WindowUpdateFrame) (http2.ErrCode, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		if c.sendWindow+inc > math.MaxInt32 {
			return http2.ErrCodeFlowControl, errors.New("connection send window past 2^31-1")
		}
		c.sendWindow += inc
		c.sendable.Broadcast()
		return 0, nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		c.mu.Unlock()
		known := c.knownID(f.StreamID)
		c.mu.Lock()
		if !known {
			return http2.ErrCodeProtocol, fmt.Errorf("WINDOW_UPDATE on idle stream %d", f.StreamID)
		}
		return 0, nil // a stream that just ended
	}
	if s.sendWindow+inc > math.MaxInt32 {
		c.mu.Unlock()
		c.resetStream(s.id, http2.ErrCodeFlowControl, errStreamReset)
		c.mu.Lock()
		return 0, nil
	}
	s.sendWindow += inc
	c.sendable.Broadcast()
	return 0, nil
}

func (c *h2Conn) onPing(f *http2.PingFrame) {
	if !f.IsAck() {
		c.queueAsync(h2Ctrl{typ: http2.FramePing, ack: true, ping: f.Data})
		return
	}
	c.mu.Lock()
	if f.Data == c.pingData {
		c.pingSent = time.Time{}
	}
	c.mu.Unlock()
}

// onGoAway stops new streams; the streams the server did not take are refused, the others
// finish. It reports that the connection is done.
func (c *h2Conn) onGoAway(f *http2.GoAwayFrame) bool {
	c.mu.Lock()
	c.goAway = true
	var refused []*h2Stream
	for id, s := range c.streams {
		if id > f.LastStreamID {
			refused = append(refused, s)
		}
	}
	c.mu.Unlock()
	if f.ErrCode != http2.ErrCodeNo {
		c.log.Debug("hbone GOAWAY received", "code", f.ErrCode.String(), "debug", string(f.DebugData()))
	}
	for _, s := range refused {
		c.resetStream(s.id, 0, errRefused)
	}
	return c.closeIfDrained()
}

// queue adds a control frame and writes it unless a writer holds wmu (that writer then
// writes it before letting go). Not for the read loop: see queueAsync.
func (c *h2Conn) queue(f h2Ctrl) {
	if c.push(f) {
		c.kick()
	}
}

// queueAsync is queue for the read loop, which must never wait on the socket: when nobody
// holds wmu, another goroutine writes the frame. Control frames are rare (acknowledgements,
// a WINDOW_UPDATE per half window), so the extra goroutine costs nothing per byte.
func (c *h2Conn) queueAsync(f h2Ctrl) {
	if c.push(f) {
		go c.kick()
	}
}

// push appends f to the control queue, unless the connection is closed.
func (c *h2Conn) push(f h2Ctrl) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.ctrl = append(c.ctrl, f)
	return true
}

// kick writes the queued control frames if wmu is free.
func (c *h2Conn) kick() {
	if c.wmu.TryLock() {
		c.unlockWrite()
	}
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

// maybeIdle arms the idle close of a client connection left without streams; mu held.
func (c *h2Conn) maybeIdle() {
	if !c.client || c.local.idle <= 0 || c.closed || len(c.streams) > 0 || c.reserved > 0 {
		return
	}
	c.idleSince = time.Now()
	if c.idleTimer == nil {
		c.idleTimer = time.AfterFunc(c.local.idle, c.idleCheck)
	} else {
		c.idleTimer.Reset(c.local.idle)
	}
}

// idleCheck closes the connection if it has had no stream since the timer was armed.
func (c *h2Conn) idleCheck() {
	c.mu.Lock()
	idle := len(c.streams) == 0 && c.reserved == 0 && time.Since(c.idleSince) >= c.local.idle
	c.mu.Unlock()
	if idle {
		c.closeWithError(errIdle)
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
