//go:build linux

package discovery

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Listening sockets through NETLINK_SOCK_DIAG (inet_diag).
//
// A SOCK_DIAG_BY_FAMILY dump of TCP sockets with only TCPF_LISTEN in
// idiag_states walks the listening hash and stops (inet_diag_dump_icsk in
// net/ipv4/inet_diag.c): unlike a read of /proc/net/tcp it never visits the
// buckets of the established hash, so its cost follows the number of
// listeners, not the size of the hash.
//
// A sock_diag socket answers for the network namespace it was created in,
// for its whole life. The watcher keeps one per namespace it reads, created
// by a goroutine that locks its OS thread, setns(2)es into the namespace,
// creates the socket and setns(2)es back; the namespace the process runs in
// needs no setns, so it works without CAP_SYS_ADMIN.

const (
	nlmsgHdrLen     = 16 // struct nlmsghdr
	inetDiagReqLen  = 56 // struct inet_diag_req_v2
	inetDiagMsgLen  = 72 // struct inet_diag_msg
	tcpStateListen  = 10 // TCP_LISTEN
	diagRecvTimeout = 5  // seconds; the kernel answers a dump at once
	// diagRetryEvery is how many scans a namespace whose netlink read
	// failed is read from /proc before netlink is tried again.
	diagRetryEvery = 256
)

// diagSock is the sock_diag socket of one network namespace.
type diagSock struct {
	fd int // -1 while netlink failed for this namespace: read /proc
	// gen is the last scan that read the namespace; failed is the scan in
	// which netlink failed, when fd is -1.
	gen, failed uint64
}

// openDiag returns a sock_diag socket in the calling thread's network
// namespace.
func openDiag() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return -1, fmt.Errorf("netlink socket: %w", err)
	}
	// A dump is answered from the send and the following receives, so a
	// receive never waits; the timeout only bounds a kernel that misbehaves.
	tv := unix.Timeval{Sec: diagRecvTimeout}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("netlink socket timeout: %w", err)
	}
	return fd, nil
}

// openNetns opens /proc/<pid>/ns/net if it is the network namespace with
// inode netns. An error is about pid (exited, a zombie, reused or moved to
// another namespace, or a fake /proc), not about netlink.
func openNetns(procfd, pid int, netns uint64, st *unix.Stat_t) (int, error) {
	nsfd, err := openAt(procfd, strconv.Itoa(pid)+"/ns/net", unix.O_RDONLY)
	if err != nil {
		return -1, err
	}
	if err := unix.Fstat(nsfd, st); err != nil || st.Ino != netns {
		unix.Close(nsfd)
		return -1, errors.New("another network namespace")
	}
	return nsfd, nil
}

// openDiagIn returns a sock_diag socket in the network namespace nsfd,
// whose stat is target.
func openDiagIn(nsfd int, target *unix.Stat_t) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// A thread that fails to come back to its namespace must not run
		// other goroutines: it stays locked, and the runtime ends it when
		// this goroutine returns.
		runtime.LockOSThread()
		fd, restored, err := openDiagInLocked(nsfd, target)
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- result{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

// openDiagInLocked runs on a locked OS thread. restored is false when the
// thread was left in another namespace.
func openDiagInLocked(nsfd int, target *unix.Stat_t) (fd int, restored bool, err error) {
	self, err := openAt(unix.AT_FDCWD, "/proc/thread-self/ns/net", unix.O_RDONLY)
	if err != nil {
		return -1, true, fmt.Errorf("open own netns: %w", err)
	}
	defer unix.Close(self)
	var own unix.Stat_t
	if err := unix.Fstat(self, &own); err != nil {
		return -1, true, fmt.Errorf("stat own netns: %w", err)
	}
	if own.Dev == target.Dev && own.Ino == target.Ino {
		fd, err := openDiag()
		return fd, true, err
	}
	if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
		return -1, true, fmt.Errorf("setns: %w", err) // the thread did not move
	}
	fd, err = openDiag()
	if rerr := unix.Setns(self, unix.CLONE_NEWNET); rerr != nil {
		// The socket, if any, is good: it belongs to the target namespace.
		return fd, false, err
	}
	return fd, true, err
}

// dumpListen adds to out the inode and port of each listening TCP socket of
// family (AF_INET or AF_INET6) whose port want accepts, in the namespace of
// the sock_diag socket fd. buf receives the answer; 32 KiB holds the largest
// message the kernel sends.
func dumpListen(fd int, family uint8, seq uint32, buf []byte, want func(uint16) bool, out map[uint64]uint16) error {
	var req [nlmsgHdrLen + inetDiagReqLen]byte
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], seq)
	// struct inet_diag_req_v2: family, protocol, ext, pad, states, sockid.
	req[16] = family
	req[17] = unix.IPPROTO_TCP
	ne.PutUint32(req[20:], 1<<tcpStateListen)
	for {
		// No address: an unconnected netlink socket sends to the kernel.
		_, err := unix.Write(fd, req[:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink send: %w", err)
		}
		break
	}
	for {
		n, err := recvTrunc(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		if n > len(buf) {
			return fmt.Errorf("netlink message of %d bytes, buffer of %d", n, len(buf))
		}
		if n < nlmsgHdrLen {
			return fmt.Errorf("netlink message of %d bytes", n)
		}
		done, err := parseDiag(buf[:n], family, seq, want, out)
		if done || err != nil {
			return err
		}
	}
}

// recvTrunc receives one datagram into buf and returns its full length
// (MSG_TRUNC), which exceeds len(buf) when it did not fit. Unlike
// unix.Recvfrom it allocates no source address.
func recvTrunc(fd int, buf []byte) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(buf))), uintptr(len(buf)), unix.MSG_TRUNC, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// parseDiag parses the netlink messages of one datagram. It reports done at
// NLMSG_DONE. Messages of another sequence number (a stale dump) are skipped.
func parseDiag(b []byte, family uint8, seq uint32, want func(uint16) bool, out map[uint64]uint16) (done bool, err error) {
	ne := binary.NativeEndian
	for len(b) >= nlmsgHdrLen {
		l := int(ne.Uint32(b[0:]))
		if l < nlmsgHdrLen || l > len(b) {
			return false, fmt.Errorf("netlink message length %d of %d", l, len(b))
		}
		typ, mseq := ne.Uint16(b[4:]), ne.Uint32(b[8:])
		p := b[nlmsgHdrLen:l]
		if next := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1); next < len(b) {
			b = b[next:]
		} else {
			b = nil
		}
		if mseq != seq {
			continue
		}
		switch typ {
		case unix.NLMSG_DONE:
			// The payload is the dump's status, when there is one.
			if len(p) >= 4 {
				if e := int32(ne.Uint32(p)); e < 0 {
					return true, fmt.Errorf("netlink dump: %w", unix.Errno(-e))
				}
			}
			return true, nil
		case unix.NLMSG_ERROR:
			if len(p) < 4 {
				return true, errors.New("netlink: short error message")
			}
			if e := int32(ne.Uint32(p)); e < 0 {
				return true, fmt.Errorf("netlink: %w", unix.Errno(-e))
			}
			return true, errors.New("netlink: unexpected acknowledgement")
		case unix.SOCK_DIAG_BY_FAMILY:
			// struct inet_diag_msg: family, state, timer, retrans, then
			// sockid (sport and dport big-endian, ...), expires, rqueue,
			// wqueue, uid, inode.
			if len(p) < inetDiagMsgLen {
				return false, fmt.Errorf("inet_diag message of %d bytes", len(p))
			}
			if p[0] != family || p[1] != tcpStateListen {
				continue
			}
			port := binary.BigEndian.Uint16(p[4:])
			if inode := uint64(ne.Uint32(p[68:])); inode != 0 && want(port) {
				out[inode] = port
			}
		}
	}
	return false, nil
}

// readListenDiag adds the wanted listening sockets of the network namespace
// netns, which pid is in, to w.listen through netlink. It reports false when
// the caller should read /proc instead.
func (w *Watcher) readListenDiag(procfd, pid int, netns uint64) bool {
	ds := w.diag[netns]
	if ds == nil {
		var st unix.Stat_t
		nsfd, err := openNetns(procfd, pid, netns, &st)
		if err != nil {
			return false // the /proc read tries this pid, then another
		}
		fd, err := openDiagIn(nsfd, &st)
		unix.Close(nsfd)
		if err != nil {
			w.diagFailed(netns, err)
			w.diag[netns] = &diagSock{fd: -1, gen: w.gen, failed: w.gen}
			return false
		}
		ds = &diagSock{fd: fd}
		w.diag[netns] = ds
	}
	ds.gen = w.gen
	if ds.fd < 0 {
		if w.gen-ds.failed >= diagRetryEvery {
			delete(w.diag, netns) // try netlink again next scan
		}
		return false
	}
	// The dirent buffer is free here: the /proc listing is done, and the
	// fd listings come after all the namespaces are read.
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		w.diagSeq++
		if err := dumpListen(ds.fd, family, w.diagSeq, w.dirBuf, w.wantPort, w.listen); err != nil {
			// Part of the namespace may be in w.listen: the /proc read
			// adds the same sockets.
			w.diagFailed(netns, err)
			unix.Close(ds.fd)
			ds.fd, ds.failed = -1, w.gen
			return false
		}
	}
	return true
}

// diagFailed logs the first netlink failure of the watcher.
func (w *Watcher) diagFailed(netns uint64, err error) {
	if !w.diagLogged {
		w.diagLogged = true
		w.logger.Debug("listening sockets: netlink failed, reading /proc/<pid>/net/tcp instead",
			zap.Uint64("netns", netns), zap.Error(err))
	}
}

// closeDiag closes the sockets of the namespaces not read in this scan, or
// all of them: a socket keeps its namespace alive.
func (w *Watcher) closeDiag(all bool) {
	for netns, ds := range w.diag {
		if all || ds.gen != w.gen {
			if ds.fd >= 0 {
				unix.Close(ds.fd)
			}
			delete(w.diag, netns)
		}
	}
}
