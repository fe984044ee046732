package main

import (
	"flag"
	"io"
	"testing"
	"time"
)

// TestPlaintextListenerOff: without --xds-listen the TLS listener is the only one, so --ca-dir
// is required.
func TestPlaintextListenerOff(t *testing.T) {
	if code := run([]string{"--config-dir", t.TempDir(), "--xds-listen", ""}); code != 2 {
		t.Errorf("--xds-listen \"\" without --ca-dir: exit %d, want 2", code)
	}
}

// TestLimitFlags: the limit flags reach server.Limits.
func TestLimitFlags(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	limits := limitFlags(fs)
	if err := fs.Parse([]string{"--max-streams-per-connection=7", "--max-recv-message-size=1024", "--max-connections=3", "--max-streams=9",
		"--max-new-streams-per-second=-1", "--keepalive-time=1m", "--keepalive-timeout=2s", "--keepalive-min-time=3s",
		"--xds-send-timeout=4s", "--xds-ack-timeout=5s"}); err != nil {
		t.Fatal(err)
	}
	l := limits()
	if l.MaxConcurrentStreams != 7 || l.MaxRecvMsgSize != 1024 || l.MaxConnections != 3 || l.MaxStreams != 9 || l.StreamsPerSecond != -1 ||
		l.KeepaliveTime != time.Minute || l.KeepaliveTimeout != 2*time.Second || l.KeepaliveMinTime != 3*time.Second ||
		l.SendTimeout != 4*time.Second || l.AckTimeout != 5*time.Second {
		t.Errorf("limits %+v", l)
	}
}
