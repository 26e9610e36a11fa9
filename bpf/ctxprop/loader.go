//go:build linux

package ctxprop

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/ebpftracing/ebpftracingreceiver/bpf/httptrace"
	"golang.org/x/sys/unix"
)

// Propagator is the loaded, and after Attach attached, header injector.
type Propagator struct {
	mu        sync.Mutex // serializes AddExisting (one inode set at a time)
	objs      ctxpropObjects
	sockops   link.Link
	skMsgOn   bool
	skSkbOn   bool
	cgroupDir string
}

// Load loads the programs, sharing httptrace's maps and its sampler. On a verifier refusal
// the error carries the verifier log.
//
// returnAtOnce loads programs that return as soon as they run, letting every
// message through untouched: the floor of the hooks' cost, for benchmarks.
func Load(shared httptrace.SharedMaps, sampler httptrace.Sampler, returnAtOnce bool) (*Propagator, error) {
	spec, err := loadCtxprop()
	if err != nil {
		return nil, fmt.Errorf("load ctxprop spec: %w", err)
	}
	// The root of a request that starts its own trace (its thread serves
	// several requests at once) is sampled as httptrace samples roots.
	if err := httptrace.SetSampler(spec, sampler); err != nil {
		return nil, err
	}
	if returnAtOnce {
		if err := spec.Variables["return_at_once"].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("set return_at_once: %w", err)
		}
	}
	p := &Propagator{}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"traced_pids": shared.TracedPids,
		"thread_ctxs": shared.ThreadCtxs,
		"client_ids":  shared.ClientIDs,
		"go_procs":    shared.GoProcs,
		"go_ctxs":     shared.GoCtxs,
		"go_parents":  shared.GoParents,
		"tracestates": shared.Tracestates,
	}}
	if err := spec.LoadAndAssign(&p.objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load ctxprop programs: %w\n%+v", err, ve)
		}
		return nil, fmt.Errorf("load ctxprop programs: %w", err)
	}
	return p, nil
}

// Attach attaches sk_msg to the sockhash and sockops to the cgroup v2
// directory cgroupDir (the hierarchy's root sees every connection of the
// host; the program only keeps those of traced processes). The sockops link
// is a BPF link with multi-attach semantics: other sockops programs on the
// cgroup (Cilium's, for instance) keep running.
func (p *Propagator) Attach(cgroupDir string) error {
	if cgroupDir == "" {
		return errors.New("attach sockops: no cgroup v2 hierarchy is mounted: mount it (or the host's /sys/fs/cgroup) to inject headers")
	}
	err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  p.objs.CtxpropSocks.FD(),
		Program: p.objs.CtxpropSkMsg,
		Attach:  ebpf.AttachSkMsgVerdict,
	})
	if err != nil {
		return fmt.Errorf("attach sk_msg to sockhash: %w", err)
	}
	p.skMsgOn = true
	err = link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  p.objs.CtxpropSocks.FD(),
		Program: p.objs.CtxpropSkSkb,
		Attach:  ebpf.AttachSkSKBVerdict,
	})
	if err != nil {
		return fmt.Errorf("attach sk_skb verdict to sockhash: %w", err)
	}
	p.skSkbOn = true
	l, err := link.AttachCgroup(link.CgroupOptions{
		Path:    cgroupDir,
		Attach:  ebpf.AttachCGroupSockOps,
		Program: p.objs.CtxpropSockops,
	})
	if err != nil {
		return fmt.Errorf("attach sockops to cgroup %s: %w", cgroupDir, err)
	}
	p.sockops = l
	p.cgroupDir = cgroupDir
	return nil
}

// AddExisting puts the established TCP connections that process pid already
// has into the sockhash, so requests on connections opened before it was
// traced (keep-alive pools) are injected too. It walks the host's TCP
// sockets once (iter/tcp) looking for the process's socket inodes.
func (p *Propagator) AddExisting(pid int) error {
	inodes, err := socketInodes(pid)
	if err != nil || len(inodes) == 0 {
		return err
	}
	inodes = clientSockets(pid, inodes)
	if len(inodes) == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var k uint64
	for it := p.objs.ExistingInodes.Iterate(); it.Next(&k, new(uint8)); {
		_ = p.objs.ExistingInodes.Delete(k)
	}
	for _, ino := range inodes {
		if err := p.objs.ExistingInodes.Put(ino, uint8(1)); err != nil {
			return fmt.Errorf("existing connections of pid %d: %w", pid, err)
		}
	}
	it, err := link.AttachIter(link.IterOptions{Program: p.objs.CtxpropExisting})
	if err != nil {
		return fmt.Errorf("attach iter/tcp: %w", err)
	}
	defer it.Close()
	rd, err := it.Open()
	if err != nil {
		return fmt.Errorf("run iter/tcp: %w", err)
	}
	defer rd.Close()
	if _, err := io.Copy(io.Discard, rd); err != nil {
		return fmt.Errorf("run iter/tcp: %w", err)
	}
	return nil
}

// socketInodes lists the socket inodes among the open files of pid, less
// those a thread of pid is blocked reading right now (see blockedReads).
func socketInodes(pid int) ([]uint64, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list fds of pid %d: %w", pid, err)
	}
	blocked := blockedReads(pid)
	var out []uint64
	for _, e := range ents {
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil || !strings.HasPrefix(target, "socket:[") || !strings.HasSuffix(target, "]") {
			continue
		}
		if fd, err := strconv.ParseUint(e.Name(), 10, 64); err == nil && blocked[fd] {
			continue
		}
		if ino, err := strconv.ParseUint(target[len("socket:["):len(target)-1], 10, 64); err == nil {
			out = append(out, ino)
		}
	}
	return out, nil
}

// blockedReads returns the fds that threads of pid are blocked reading in
// a system call (/proc/<pid>/task/*/syscall). A socket must not enter the
// sockhash under such a reader: with the SK_SKB verdict on the sockhash,
// what arrives next is queued where a recv() that began before can no
// longer see it, and that call would wait forever. Such a socket is left
// out: its requests are still traced, but get no header injected.
func blockedReads(pid int) map[uint64]bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil
	}
	out := map[uint64]bool{}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/syscall", pid, task.Name()))
		if err != nil {
			continue
		}
		// "nr arg0 arg1 ... sp pc", the arguments in hex; "running" or -1 otherwise.
		fs := strings.Fields(string(b))
		if len(fs) < 2 {
			continue
		}
		nr, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			continue
		}
		switch nr {
		case unix.SYS_READ, unix.SYS_READV, unix.SYS_RECVFROM, unix.SYS_RECVMSG, unix.SYS_RECVMMSG:
		default:
			continue
		}
		if fd, err := strconv.ParseUint(strings.TrimPrefix(fs[1], "0x"), 16, 64); err == nil {
			out[fd] = true
		}
	}
	return out
}

// clientSockets keeps the inodes of connections the process opened: those
// whose local port is not one it listens on. Accepted connections need no
// injection, and enrolling a socket whose reader is already blocked in
// recv leaves that reader waiting on the psock's queue. Without
// /proc/<pid>/net/tcp* it keeps them all.
func clientSockets(pid int, inodes []uint64) []uint64 {
	mine := make(map[uint64]bool, len(inodes))
	for _, ino := range inodes {
		mine[ino] = true
	}
	listening := map[uint64]bool{} // local ports the process listens on
	type est struct{ port, ino uint64 }
	var established []est
	read := false
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		read = true
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fs := strings.Fields(line)
			if len(fs) < 10 {
				continue
			}
			ino, err1 := strconv.ParseUint(fs[9], 10, 64)
			i := strings.LastIndexByte(fs[1], ':')
			if err1 != nil || i < 0 || !mine[ino] {
				continue
			}
			port, err := strconv.ParseUint(fs[1][i+1:], 16, 16)
			if err != nil {
				continue
			}
			switch fs[3] {
			case "0A": // TCP_LISTEN
				listening[port] = true
			case "01": // TCP_ESTABLISHED
				established = append(established, est{port, ino})
			}
		}
	}
	if !read {
		return inodes
	}
	var out []uint64
	for _, e := range established {
		if !listening[e.port] {
			out = append(out, e.ino)
		}
	}
	return out
}

// Counters are the injector's counters, summed over CPUs.
type Counters struct {
	Injected       uint64 // headers injected
	AppHeader      uint64 // requests that had their own traceparent
	HeadersTooLong uint64 // header blocks without an end in their first 16 KiB: not injected
	PushFailed     uint64 // the kernel could not grow (or linearize) the message
	Tracestate     uint64 // tracestate headers injected with a traceparent
	Split          uint64 // injections into header blocks written in several writes
	Unmerged       uint64 // injections sent in several pieces (no memory to merge them)
	// PipelinedSkipped counts requests following another in one write that
	// were left untouched: starting past the write's first 1023 bytes (what
	// httptrace parses), past the fourth, or with a block going on in the
	// next write.
	PipelinedSkipped uint64
}

// ReadCounters sums the per-CPU counters.
func (p *Propagator) ReadCounters() (Counters, error) {
	var c Counters
	for idx, dst := range map[ctxpropPropCounter]*uint64{
		ctxpropPropCounterPROP_INJECTED:          &c.Injected,
		ctxpropPropCounterPROP_APP_HEADER:        &c.AppHeader,
		ctxpropPropCounterPROP_HEADERS_TOO_LONG:  &c.HeadersTooLong,
		ctxpropPropCounterPROP_PUSH_FAILED:       &c.PushFailed,
		ctxpropPropCounterPROP_TRACESTATE:        &c.Tracestate,
		ctxpropPropCounterPROP_SPLIT:             &c.Split,
		ctxpropPropCounterPROP_UNMERGED:          &c.Unmerged,
		ctxpropPropCounterPROP_PIPELINED_SKIPPED: &c.PipelinedSkipped,
	} {
		var per []uint64
		if err := p.objs.PropCounters.Lookup(uint32(idx), &per); err != nil {
			return c, fmt.Errorf("read ctxprop counter %d: %w", idx, err)
		}
		for _, v := range per {
			*dst += v
		}
	}
	return c, nil
}

// Close detaches sockops from the cgroup and sk_msg from the sockhash, and
// closes the programs and maps. Sockets leave the sockhash with it.
func (p *Propagator) Close() error {
	var errs []error
	if p.sockops != nil {
		if err := p.sockops.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach sockops from cgroup %s: %w", p.cgroupDir, err))
		}
		p.sockops = nil
	}
	if p.skMsgOn {
		err := link.RawDetachProgram(link.RawDetachProgramOptions{
			Target:  p.objs.CtxpropSocks.FD(),
			Program: p.objs.CtxpropSkMsg,
			Attach:  ebpf.AttachSkMsgVerdict,
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("detach sk_msg from sockhash: %w", err))
		}
		p.skMsgOn = false
	}
	if p.skSkbOn {
		err := link.RawDetachProgram(link.RawDetachProgramOptions{
			Target:  p.objs.CtxpropSocks.FD(),
			Program: p.objs.CtxpropSkSkb,
			Attach:  ebpf.AttachSkSKBVerdict,
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("detach sk_skb verdict from sockhash: %w", err))
		}
		p.skSkbOn = false
	}
	if err := p.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close ctxprop objects: %w", err))
	}
	return errors.Join(errs...)
}
