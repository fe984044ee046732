package hbone

import (
	"errors"
	"fmt"
	"math"
	"time"

	"golang.org/x/net/http2"
)

// The read loop's handling of each frame type but DATA (h2.go reads the frames).

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
	if err := c.onStream(s, f); err != nil {
		return http2.ErrCodeEnhanceYourCalm, err
	}
	return 0, nil
}

// onSettings applies the peer's SETTINGS and acknowledges them.
func (c *h2Conn) onSettings(f *http2.SettingsFrame) (http2.ErrCode, error) {
	if f.IsAck() {
		return 0, nil
	}
	if f.NumSettings() > h2MaxSettings || f.HasDuplicates() {
		return http2.ErrCodeProtocol, fmt.Errorf("SETTINGS with %d settings or duplicates", f.NumSettings())
	}
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			return http2.ErrCode(ce), fmt.Errorf("invalid SETTINGS: %v", err)
		}
		return http2.ErrCodeProtocol, err
	}
	c.mu.Lock()
	var overflow error
	f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			c.peer.maxStreams = s.Val
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - int64(c.peer.window)
			c.peer.window = int32(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > math.MaxInt32 { // RFC 9113 §6.9.2
					overflow = fmt.Errorf("SETTINGS_INITIAL_WINDOW_SIZE %d takes stream %d's window past 2^31-1", s.Val, st.id)
				}
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
	if overflow != nil {
		return http2.ErrCodeFlowControl, overflow
	}
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
