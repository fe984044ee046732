package node

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/goambient/goambient/integration/kubeapi"
)

// proc is a started component whose output goes to <Dir>/<name>.log.
type proc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

// start starts bin with args, logging to <Dir>/<name>.log, killed with the process that runs
// the node even when it dies without its cleanups (kubeapi.Spawn's Pdeathsig).
func (n *Node) start(name, bin string, args []string, env ...string) (*proc, error) {
	logPath := n.Dir + "/" + name + ".log"
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	// Its own process group: the signal ends it, not its children (containerd's shims are
	// stopped through containerd).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := kubeapi.Spawn(cmd); err != nil {
		f.Close()
		return nil, fmt.Errorf("node: start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	n.mu.Lock()
	n.procs = append(n.procs, p)
	n.mu.Unlock()
	return p, nil
}

// stop sends SIGTERM, then SIGKILL after 10 s, by PID, and waits for the exit.
func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// exited returns a started process that has exited, or nil.
func (n *Node) exited() *proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.procs {
		select {
		case <-p.exited:
			return p
		default:
		}
	}
	return nil
}

// freePort returns a port free on the node's address a moment ago (the address is the
// node's own, so only the node's components can take it in between).
func (n *Node) freePort() (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(n.NodeIP, "0"))
	if err != nil {
		return "", fmt.Errorf("node: %w", err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port), nil
}

// Tail returns the last lines of a file.
func Tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	ls := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return string(bytes.Join(ls, []byte("\n")))
}
