//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// proc is a child process in its own process group.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	out  *syncBuffer
}

// startProc starts name in its own process group, so a Ctrl-C at the
// terminal reaches only this process, which then stops it. deathSig is sent
// to it if this process dies first (SIGKILL when 0). env is added to this
// process's environment.
func startProc(ctx context.Context, name string, deathSig syscall.Signal, env []string, path string, args ...string) (*proc, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if deathSig == 0 {
		deathSig = syscall.SIGKILL
	}
	p := &proc{name: name, cmd: exec.Command(path, args...), done: make(chan struct{}), out: &syncBuffer{limit: 4 << 20}}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// startPinned is startProc with the process (and every thread it makes)
// on the CPUs of cpus (taskset -c, which execs in place: the pid is the
// command's); unpinned when cpus is "".
func startPinned(ctx context.Context, cpus, name string, deathSig syscall.Signal, env []string, path string, args ...string) (*proc, error) {
	if cpus == "" {
		return startProc(ctx, name, deathSig, env, path, args...)
	}
	return startProc(ctx, name, deathSig, env, "taskset", append([]string{"-c", cpus, path}, args...)...)
}

// pinSelf puts every thread of this process on the CPUs of cpus (a list
// like "0" or "0,1"); threads made later inherit it from their creator.
func pinSelf(cpus string) error {
	var set unix.CPUSet
	for _, f := range strings.Split(cpus, ",") {
		n, err := strconv.Atoi(f)
		if err != nil {
			return fmt.Errorf("cpu list %q: %w", cpus, err)
		}
		set.Set(n)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("pin thread %d to CPUs %s: %w", tid, cpus, err)
		}
	}
	return nil
}

func (p *proc) pid() int       { return p.cmd.Process.Pid }
func (p *proc) output() []byte { return p.out.Bytes() }
func (p *proc) exited() bool   { return isClosed(p.done) }
func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (p *proc) alive() error {
	if p.exited() {
		return fmt.Errorf("%s (pid %d) exited: %v\n%s", p.name, p.pid(), p.cmd.ProcessState, tail(p.output(), 30))
	}
	return nil
}

// waitOutput waits until the process has written s.
func (p *proc) waitOutput(ctx context.Context, s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !p.out.Contains(s) {
		if err := p.alive(); err != nil {
			return fmt.Errorf("waiting for %q: %w", strings.TrimSpace(s), err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s wrote no %q within %v:\n%s", p.name, strings.TrimSpace(s), timeout, tail(p.output(), 30))
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// kill SIGKILLs the process group and waits for the process.
func (p *proc) kill() {
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	<-p.done
}

// terminate sends SIGTERM and waits up to timeout for the process to exit,
// then SIGKILLs its group. It returns the exit code (128+signal when a signal
// ended it). Safe to call again once the process has exited.
func (p *proc) terminate(timeout time.Duration) (int, error) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(timeout):
			p.kill()
			return exitCode(p.cmd.ProcessState), fmt.Errorf("%s (pid %d) still running %v after SIGTERM: killed", p.name, p.pid(), timeout)
		}
	}
	return exitCode(p.cmd.ProcessState), nil
}

func exitCode(st *os.ProcessState) int {
	if st == nil {
		return -1
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}

// syncBuffer is a concurrency-safe buffer that keeps at most limit bytes
// (the first ones).
type syncBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	limit int
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.limit - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *syncBuffer) Contains(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Contains(b.buf.Bytes(), []byte(s))
}

func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}
