package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
)

// readSettings reads the first frames from fr: the peer's SETTINGS and its connection-level
// WINDOW_UPDATE.
func readSettings(fr *http2.Framer) (map[http2.SettingID]uint32, uint32, error) {
	settings := map[http2.SettingID]uint32{}
	var connWindowInc uint32
	for range 4 {
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, 0, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			f.ForeachSetting(func(s http2.Setting) error { settings[s.ID] = s.Val; return nil })
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connWindowInc = f.Increment
			}
		}
		if len(settings) > 0 && connWindowInc > 0 {
			break
		}
	}
	return settings, connWindowInc, nil
}

// The server advertises Istio's limits and windows.
func TestServerHTTP2Settings(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	tc := dialPreface(t, e)
	fr := http2.NewFramer(tc, tc)
	fr.WriteSettings()
	settings, inc, err := readSettings(fr)
	if err != nil {
		t.Fatal(err)
	}
	want := map[http2.SettingID]uint32{
		http2.SettingMaxConcurrentStreams: 200,
		http2.SettingInitialWindowSize:    4 << 20,
		http2.SettingMaxFrameSize:         MaxFrameSize,
		http2.SettingMaxHeaderListSize:    64 << 10,
	}
	for id, v := range want {
		if settings[id] != v {
			t.Errorf("server %s = %d, want %d", id, settings[id], v)
		}
	}
	if got := inc + 65535; got != 16<<20 {
		t.Errorf("server connection window %d, want %d", got, 16<<20)
	}
}

// The client's ClientHello carries no SNI and offers only TLS 1.3 and h2; its HTTP/2 SETTINGS
// carry Istio's windows and frame size.
func TestClientHelloAndHTTP2Settings(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	// A bare TLS server that only reads what the client sends first.
	srvConf, err := ServerTLSConfig(e.bundle, nil, func(netip.Addr) (*x509svid.SVID, error) { return e.serverSVID, nil })
	if err != nil {
		t.Fatal(err)
	}
	hellos := make(chan *tls.ClientHelloInfo, 1)
	srvConf.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		hellos <- h
		return nil, nil
	}
	ln := listen(t)
	type got struct {
		settings map[http2.SettingID]uint32
		inc      uint32
	}
	res := make(chan got, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := tls.Server(c, srvConf)
		tc.SetDeadline(time.Now().Add(wait))
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(tc, preface); err != nil || string(preface) != http2.ClientPreface {
			res <- got{}
			return
		}
		s, inc, _ := readSettings(http2.NewFramer(io.Discard, tc))
		res <- got{s, inc}
	}()
	c, _ := e.client(ClientConfig{})
	tg := e.target(netip.MustParseAddrPort("10.0.0.1:80"))
	tg.Address = addrOf(ln)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { // the fake server never answers: the Dial ends when the check is done
		c.Dial(ctx, tg)
	}()
	var g got
	select {
	case g = <-res:
	case <-time.After(wait):
		t.Fatal("no SETTINGS from the client")
	}
	cancel()
	// The ClientHello: no SNI, only h2 offered, only TLS 1.3 offered, AES-GCM among the suites.
	h := <-hellos
	if h.ServerName != "" {
		t.Errorf("ClientHello SNI %q, want none", h.ServerName)
	}
	if !slices.Equal(h.SupportedProtos, []string{"h2"}) {
		t.Errorf("ClientHello ALPN %q, want [h2]", h.SupportedProtos)
	}
	if !slices.Equal(h.SupportedVersions, []uint16{tls.VersionTLS13}) {
		t.Errorf("ClientHello versions %x, want TLS 1.3 only", h.SupportedVersions)
	}
	for _, cs := range CipherSuites {
		if !slices.Contains(h.CipherSuites, cs) {
			t.Errorf("ClientHello lacks %s", tls.CipherSuiteName(cs))
		}
	}
	if g.settings[http2.SettingInitialWindowSize] != 4<<20 || g.settings[http2.SettingMaxFrameSize] != 1<<20 {
		t.Errorf("client SETTINGS %v, want INITIAL_WINDOW_SIZE 4 MiB, MAX_FRAME_SIZE 1 MiB", g.settings)
	}
	if g.settings[http2.SettingEnablePush] != 0 {
		t.Errorf("client enables push")
	}
	if got := g.inc + 65535; got != 16<<20 {
		t.Errorf("client connection window %d, want %d", got, 16<<20)
	}
}
