package kubeapi

import (
	"os/exec"
	"syscall"
)

// Spawn starts cmd (not yet started) so that it is killed when the test binary ends, even
// without its cleanups (Pdeathsig, from the harness's one locked thread, as etcd and the API
// server are started). The caller waits for it and kills it by its PID.
func Spawn(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	return spawn(cmd)
}
