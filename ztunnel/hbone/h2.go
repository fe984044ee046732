package hbone

import (
	"bufio"
	"bytes"
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
// read each other's frames. The queue is bounded (a peer that makes us answer without reading
// the answers is closed), and the read loop wakes at most one writer goroutine at a time
// (h2write.go).
//
// What a peer can make a connection hold is bounded: DATA is read through pooled buffers
// (nothing is kept between frames, whatever the frame size), other frames larger than
// framerKeep make the Framer's read buffer be dropped after them, a header block may not run on
// for more than headerBlockSlack bytes past its first frame, and the streams' buffers are
// bounded by flow control.

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
	// idle closes a connection that has had no stream for this long (≤ 0: never): a client
	// closes it, a server sends GOAWAY and closes it.
	idle time.Duration
	// maxCtrl is how many control frames may wait to be written; one more closes the
	// connection (x/net's maxQueuedControlFrames).
	maxCtrl int
}

// The initial values of RFC 9113 §6.5.2, in force until the peer's SETTINGS arrive.
const (
	h2DefaultWindow   = 65535
	h2DefaultMaxFrame = 16384
	h2MaxStreamID     = math.MaxInt32
	// h2MaxSettings is the most settings a SETTINGS frame may carry (x/net's server refuses
	// more than 100, or duplicates, as a connection error).
	h2MaxSettings = 100
)

// framerKeep is the largest frame (or header block) whose read buffer the Framer keeps: after
// a larger one, the Framer is replaced so that the buffer is garbage.
const framerKeep = 16 << 10

// headerBlockSlack is how many bytes a header block may take past its HEADERS frame: twice
// the header list limit (x/net's own check refuses a fragment over twice what is left) plus
// 64 KiB of frame headers. It bounds a peer that sends empty CONTINUATION frames forever.
func headerBlockSlack(maxHeaderList uint32) int64 { return 2*int64(maxHeaderList) + 64<<10 }

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
	// errPeerCancel: RST_STREAM with CANCEL, the peer no longer wants the stream. After this
	// side's END_STREAM it is a normal end too: Go's x/net client sends it instead of NO_ERROR
	// when its caller closes an answer it has read whole (see h2Stream.abort).
	errPeerCancel = fmt.Errorf("%w by the peer: %s", errStreamReset, http2.ErrCodeCancel)
	// errCtrlFlood: more control frames wait to be written than the limit; the peer is not
	// reading what it makes us send.
	errCtrlFlood = errors.New("hbone: too many control frames queued (the peer does not read them)")
	// errHeaderBlockTooLong: a header block ran past headerBlockSlack.
	errHeaderBlockTooLong = errors.New("hbone: header block too long (CONTINUATION flood)")
)

// h2Conn is one HTTP/2 connection carrying HBONE streams.
type h2Conn struct {
	log    *slog.Logger
	nc     net.Conn // what the frames are read from and written to (the TLS connection)
	raw    net.Conn // the TCP connection under it: closed directly when TLS's close hangs
	client bool
	local  h2Settings
	// onStream is called by the read loop for each new request stream (server); it must
	// not block. An error is a connection error (ENHANCE_YOUR_CALM).
	onStream func(*h2Stream, *http2.MetaHeadersFrame) error
	// onClose is called once, after the connection is closed.
	onClose func(error)

	fr   *http2.Framer // reads, by the read loop only; replaced after a large frame
	in   frameSource   // what fr reads from
	hdec *hpack.Decoder

	wmu  sync.Mutex // held while frames are encoded and written
	bw   *bufio.Writer
	fw   *http2.Framer // writes into bw
	henc *hpack.Encoder
	hbuf bytes.Buffer

	mu         sync.Mutex
	sendable   sync.Cond // on mu: a send window grew, a stream slot freed, or the connection closed
	streams    map[uint32]*h2Stream
	ctrl       []h2Ctrl // frames for the next wmu holder to write
	kicking    bool     // a goroutine started to write ctrl has not yet taken wmu
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
	idleSince   time.Time   // when the connection last had no stream
	idleTimer   *time.Timer // closes a connection idle for local.idle
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
	c.in.r = nc
	c.hdec = hpack.NewDecoder(4096, nil)
	c.newFramer()
	return c
}

// newFramer gives the read loop a new Framer, dropping the old one's read buffer. The HPACK
// decoder (and its dynamic table) carries over.
func (c *h2Conn) newFramer() {
	c.fr = http2.NewFramer(nil, &c.in)
	c.fr.SetMaxReadFrameSize(c.local.maxFrame)
	c.fr.ReadMetaHeaders = c.hdec
	c.fr.MaxHeaderListSize = c.local.maxHeaderList
	c.fr.SetReuseFrames()
}

// frameSource is what the Framer reads from: the connection, with a count of the bytes read
// since reset and, when limit > 0, a bound on them.
type frameSource struct {
	r     io.Reader
	n     int64
	limit int64
}

func (s *frameSource) reset(limit int64) { s.n, s.limit = 0, limit }

func (s *frameSource) Read(p []byte) (int, error) {
	if s.limit > 0 {
		if s.n >= s.limit {
			return 0, errHeaderBlockTooLong
		}
		p = p[:min(int64(len(p)), s.limit-s.n)]
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	return n, err
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
	c.maybeIdle()
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
		c.in.reset(0)
		fh, err := c.fr.ReadFrameHeader()
		if err != nil {
			var ce http2.ConnectionError
			switch {
			case errors.Is(err, http2.ErrFrameTooLarge):
				c.fail(http2.ErrCodeFrameSize, fmt.Errorf("HTTP/2 %s frame of %d bytes, over the %d advertised", fh.Type, fh.Length, c.local.maxFrame))
			case errors.As(err, &ce):
				c.fail(http2.ErrCode(ce), fmt.Errorf("HTTP/2 protocol error from the peer: %v", c.frameError(err)))
			default:
				c.closeWithError(err)
			}
			return
		}
		c.framesRead.Add(1)
		if first {
			if fh.Type != http2.FrameSettings || fh.Flags.Has(http2.FlagSettingsAck) {
				c.fail(http2.ErrCodeProtocol, fmt.Errorf("first HTTP/2 frame is %s, not SETTINGS", fh.Type))
				return
			}
			first = false
		}
		var code http2.ErrCode
		switch {
		case fh.Type == http2.FrameData:
			code, err = c.readData(fh)
		case fh.Type > http2.FrameContinuation:
			// An extension (PRIORITY_UPDATE) or unknown frame: nothing for HBONE. Its payload is
			// skipped through io.Discard's pooled buffer, never held.
			_, err = io.CopyN(io.Discard, c.nc, int64(fh.Length))
		default:
			code, err = c.readFrame(fh)
		}
		switch {
		case err == nil:
		case code != 0:
			c.fail(code, err)
			return
		default: // the socket failed, or the frame was the end of this connection
			c.closeWithError(err)
			return
		}
	}
}

// readFrame reads and handles a frame other than DATA through the Framer. It returns a code
// with a connection error, 0 with an I/O error or a reason to stop (GOAWAY drained).
func (c *h2Conn) readFrame(fh http2.FrameHeader) (http2.ErrCode, error) {
	limit := int64(fh.Length)
	if fh.Type == http2.FrameHeaders {
		limit += headerBlockSlack(c.local.maxHeaderList)
	}
	c.in.reset(limit)
	f, err := c.fr.ReadFrameForHeader(fh)
	if err != nil {
		var se http2.StreamError
		var ce http2.ConnectionError
		switch {
		case errors.As(err, &se):
			c.resetStream(se.StreamID, se.Code, errStreamReset)
			err = nil
		case errors.As(err, &ce):
			return http2.ErrCode(ce), fmt.Errorf("HTTP/2 protocol error from the peer: %v", c.frameError(err))
		case errors.Is(err, errHeaderBlockTooLong):
			return http2.ErrCodeEnhanceYourCalm, err
		default:
			return 0, err
		}
	}
	if c.in.n > framerKeep {
		c.newFramer() // f stays valid: its Framer is only garbage once f is
	}
	if f == nil {
		return 0, nil
	}
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.PingFrame:
		c.onPing(f)
	case *http2.RSTStreamFrame:
		if !c.knownID(f.StreamID) {
			return http2.ErrCodeProtocol, fmt.Errorf("RST_STREAM on idle stream %d", f.StreamID)
		}
		c.resetStream(f.StreamID, 0, streamResetError(f.ErrCode))
	case *http2.GoAwayFrame:
		if c.client && c.onGoAway(f) {
			return 0, errConnClosed
		} // a client's GOAWAY only says it opens no more streams: nothing to do
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			c.resetStream(f.StreamID, http2.ErrCodeProtocol, errStreamReset)
		}
	case *http2.PushPromiseFrame:
		return http2.ErrCodeProtocol, errors.New("PUSH_PROMISE with push disabled")
	}
	return 0, nil
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
	case http2.ErrCodeCancel:
		return errPeerCancel
	}
	return fmt.Errorf("%w by the peer: %s", errStreamReset, code)
}

// readData reads a DATA frame from the socket and hands its payload to its stream in pieces,
// through a pooled buffer that goes back to the pool after the frame: a connection keeps no
// read buffer between frames, whatever the frame size. Flow control counts the whole frame
// (padding included); what cannot be delivered is given back to the connection window at once.
func (c *h2Conn) readData(fh http2.FrameHeader) (http2.ErrCode, error) {
	if fh.StreamID == 0 {
		return http2.ErrCodeProtocol, errors.New("DATA frame with stream ID 0")
	}
	size := int64(fh.Length)
	data, rest := size, size // data bytes; payload bytes not yet read
	padded := fh.Flags.Has(http2.FlagDataPadded)
	if padded {
		var pad [1]byte
		if size == 0 {
			return http2.ErrCodeProtocol, errors.New("padded DATA frame without a pad length")
		}
		if _, err := io.ReadFull(c.nc, pad[:]); err != nil {
			return 0, err
		}
		if int64(pad[0]) > size-1 {
			return http2.ErrCodeProtocol, errors.New("DATA frame: pad size larger than the payload")
		}
		data, rest = size-1-int64(pad[0]), size-1
	}
	c.mu.Lock()
	if size > c.recvAvail {
		c.mu.Unlock()
		return http2.ErrCodeFlowControl, fmt.Errorf("peer sent %d bytes past the connection window", size-c.recvAvail)
	}
	c.recvAvail -= size
	s := c.streams[fh.StreamID]
	c.mu.Unlock()
	ok, code := false, http2.ErrCodeStreamClosed
	if s != nil {
		ok, code = s.admit(size)
	} else if !c.knownID(fh.StreamID) {
		return http2.ErrCodeProtocol, fmt.Errorf("DATA on idle stream %d", fh.StreamID)
	}
	if !ok {
		// A stream that ended (reset with STREAM_CLOSED, as x/net does), was reset here, or
		// broke its flow control or state: the payload is dropped and its window given back.
		if _, err := io.CopyN(io.Discard, c.nc, rest); err != nil {
			return 0, err
		}
		c.giveBack(size, true)
		if code != 0 {
			c.queueAsync(h2Ctrl{typ: http2.FrameRSTStream, id: fh.StreamID, val: uint32(code)})
			if s != nil {
				s.abort(errStreamReset)
			}
		}
		return 0, nil
	}
	if err := s.receive(c.nc, data); err != nil {
		return 0, err
	}
	if padded {
		if _, err := io.CopyN(io.Discard, c.nc, rest-data); err != nil {
			return 0, err
		}
		c.giveBack(size-data, true)
	}
	if fh.Flags.Has(http2.FlagDataEndStream) {
		s.endRecv()
	}
	return 0, nil
}
