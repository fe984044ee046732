package server

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"time"
)

// mirror sends a copy of the request to a cluster in the background, as Envoy's request
// mirror policy does: the copy keeps the Host (istiod disables the -shadow suffix), its
// answer is discarded, it never changes the client's answer. At most MaxMirrors copies are in
// flight; beyond that a copy is not sent. A cluster that does not exist gets nothing.
func (x *exchange) mirror(cluster string, out *http.Request, timeout time.Duration) {
	c := x.snap.Clusters[cluster]
	if c == nil {
		return
	}
	select {
	case x.s.mirrors <- struct{}{}:
	default:
		x.s.log.Debug("mirror skipped: too many in flight", "cluster", cluster)
		return
	}
	cp := &http.Request{Method: out.Method, URL: out.URL, Proto: out.Proto, ProtoMajor: 1, ProtoMinor: 1,
		Header: out.Header.Clone(), Host: out.Host, ContentLength: out.ContentLength}
	body := x.body
	if timeout <= 0 {
		timeout = x.s.o.Limits.MirrorTimeout
	}
	src := x.st.src.String()
	dial := x.dialer(c)
	go func() {
		defer func() { <-x.s.mirrors }()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(x.ctx), timeout)
		defer cancel()
		h, err := c.Pick(x.s.o.Now(), nil, 1, x.s.rnd.next)
		if err != nil || !c.Begin(h) {
			return
		}
		defer c.End(h)
		conn, err := c.Acquire(ctx, h, src, dial)
		if err != nil {
			return
		}
		stop := context.AfterFunc(ctx, func() { conn.Conn.Close() })
		bw := bufio.NewWriter(conn)
		cp.Body = io.NopCloser(bytes.NewReader(body))
		err = cp.Write(bw)
		if err == nil {
			err = bw.Flush()
		}
		var resp *http.Response
		if err == nil {
			conn.LimitRead(x.s.o.Limits.MaxResponseHeaderBytes)
			resp, err = http.ReadResponse(conn.BR, cp)
			conn.LimitRead(-1)
		}
		reusable := false
		if err == nil {
			_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			n, _ := resp.Body.Read(make([]byte, 1)) // more than read: the connection is not reusable
			resp.Body.Close()
			reusable = err == nil && n == 0 && !resp.Close
		}
		c.Release(conn, stop() && reusable)
	}()
}
