package demo

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// logBuf is a process's output, readable while it runs, also written to a file.
type logBuf struct {
	mu   sync.Mutex
	b    bytes.Buffer
	file io.Writer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.Write(p)
	}
	return l.b.Write(p)
}

// Len is the number of bytes written so far (a mark for since).
func (l *logBuf) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// since returns the complete lines written after mark.
func (l *logBuf) since(mark int) []string {
	l.mu.Lock()
	s := l.b.String()
	l.mu.Unlock()
	if mark > len(s) {
		mark = len(s)
	}
	s = s[mark:]
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		return nil
	}
	return strings.Split(s, "\n")
}

// tail returns the last n lines.
func (l *logBuf) tail(n int) []string {
	lines := l.since(0)
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// proc is a process the demo started.
type proc struct {
	name   string
	cmd    *exec.Cmd
	out    *logBuf
	file   *os.File
	exited chan struct{}
}

// startProc starts bin with args; its output goes to a buffer and to logFile.
func startProc(name, logFile, bin string, args ...string) (*proc, error) {
	f, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, out: &logBuf{file: f}, file: f, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = sysProcAttr()
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// running says whether the process has not exited.
func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, waits up to grace, then kills; it returns once the process is gone.
func (p *proc) stop(grace time.Duration) {
	if p.running() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(grace):
			p.cmd.Process.Kill()
			<-p.exited
		}
	}
	p.file.Close()
}

// exitStatus describes how the process ended.
func (p *proc) exitStatus() string {
	if p.running() {
		return "running"
	}
	return p.cmd.ProcessState.String()
}
