//go:build linux

package discovery

import (
	"bufio"
	"encoding/binary"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

func allPorts(uint16) bool { return true }

// listenNetlink lists the listening sockets of our network namespace
// through a new sock_diag socket.
func listenNetlink(t testing.TB) map[uint64]uint16 {
	t.Helper()
	fd, err := openDiag()
	require.NoError(t, err)
	defer unix.Close(fd)
	out := map[uint64]uint16{}
	buf := make([]byte, 32<<10)
	for i, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		require.NoError(t, dumpListen(fd, family, uint32(i+1), buf, allPorts, out))
	}
	return out
}

// listenProc lists the listening sockets of pid's network namespace from
// /proc/<pid>/net/tcp and tcp6 (a missing tcp6 is no IPv6).
func listenProc(t testing.TB, pid string) map[uint64]uint16 {
	t.Helper()
	out := map[uint64]uint16{}
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open("/proc/" + pid + "/net/" + table)
		if table == "tcp6" && os.IsNotExist(err) {
			continue
		}
		require.NoError(t, err)
		err = parseListen(bufio.NewReader(f), allPorts, out)
		f.Close()
		require.NoError(t, err)
	}
	return out
}

// socketInodes returns the inodes of pid's sockets.
func socketInodes(t *testing.T, pid int) map[uint64]bool {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	out := map[uint64]bool{}
	for _, e := range entries {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if ino, ok := socketInode([]byte(link)); ok {
			out[ino] = true
		}
	}
	return out
}

func restrict(m map[uint64]uint16, inodes map[uint64]bool) map[uint64]uint16 {
	out := map[uint64]uint16{}
	for ino, port := range m {
		if inodes[ino] {
			out[ino] = port
		}
	}
	return out
}

func hasIPv6() bool {
	_, err := os.Stat("/proc/net/tcp6")
	return err == nil
}

// TestListenNetlinkMatchesProc checks that netlink lists the same listening
// sockets as /proc/net/tcp{,6} on this machine.
func TestListenNetlinkMatchesProc(t *testing.T) {
	port4 := freePort(t)
	srv4 := startServer(t, "127.0.0.1", port4)
	// The servers' sockets: each one listener, and the connection that
	// startServer made, which the server may still hold.
	inodes4 := socketInodes(t, srv4.Process.Pid)
	inodes := maps.Clone(inodes4)
	ports := []uint16{uint16(port4)}
	if hasIPv6() {
		port6 := freePort(t)
		srv6 := startServer(t, "::1", port6)
		maps.Copy(inodes, socketInodes(t, srv6.Process.Pid))
		ports = append(ports, uint16(port6))
	}

	nl, proc := listenNetlink(t), listenProc(t, "self")
	want := restrict(proc, inodes)
	assert.ElementsMatch(t, ports, slices.Collect(maps.Values(want)), "/proc: one listener per server")
	assert.Equal(t, want, restrict(nl, inodes), "netlink")

	// Other listeners on the host may come and go between two reads.
	for i := 0; ; i++ {
		nl, proc = listenNetlink(t), listenProc(t, "self")
		if assert.ObjectsAreEqual(proc, nl) || i == 20 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	assert.Equal(t, proc, nl, "all listening sockets")

	// The watcher's path: a cached socket for our own namespace.
	link, err := os.Readlink("/proc/self/ns/net")
	require.NoError(t, err)
	netns, ok := nsInode([]byte(link))
	require.True(t, ok)
	procfd, err := openAt(unix.AT_FDCWD, "/proc", unix.O_RDONLY|unix.O_DIRECTORY)
	require.NoError(t, err)
	defer unix.Close(procfd)
	w := NewWatcher([]Criteria{{Ports: []PortRange{{uint16(port4), uint16(port4)}}}}, Options{}, nil)
	defer w.Close()
	for range 3 {
		w.gen++
		clear(w.listen)
		require.True(t, w.readListenDiag(procfd, os.Getpid(), netns))
		assert.Equal(t, restrict(want, inodes4), w.listen, "wanted ports only")
		require.Len(t, w.diag, 1)
		assert.GreaterOrEqual(t, w.diag[netns].fd, 0)
	}
	assert.False(t, w.diagLogged)
	require.NoError(t, w.Close())
	assert.Empty(t, w.diag, "Close closes the sockets")
}

func TestParseDiag(t *testing.T) {
	ne := binary.NativeEndian
	msg := func(typ uint16, seq uint32, payload []byte) []byte {
		b := make([]byte, nlmsgHdrLen, nlmsgHdrLen+len(payload)+3)
		ne.PutUint32(b[0:], uint32(nlmsgHdrLen+len(payload)))
		ne.PutUint16(b[4:], typ)
		ne.PutUint32(b[8:], seq)
		b = append(b, payload...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	sock := func(family, state uint8, port uint16, inode uint32) []byte {
		p := make([]byte, inetDiagMsgLen)
		p[0], p[1] = family, state
		binary.BigEndian.PutUint16(p[4:], port)
		ne.PutUint32(p[68:], inode)
		return p
	}
	errno := func(e int32) []byte {
		p := make([]byte, 4)
		ne.PutUint32(p, uint32(e))
		return p
	}
	want := wantPorts(PortRange{8080, 8080}, PortRange{9000, 9100})
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}

	out := map[uint64]uint16{}
	done, err := parseDiag(cat(
		msg(unix.SOCK_DIAG_BY_FAMILY, 7, sock(unix.AF_INET, tcpStateListen, 8080, 11)),
		msg(unix.SOCK_DIAG_BY_FAMILY, 7, sock(unix.AF_INET, tcpStateListen, 22, 12)),                          // unwanted port
		msg(unix.SOCK_DIAG_BY_FAMILY, 7, sock(unix.AF_INET, 1, 9000, 13)),                                     // not LISTEN
		msg(unix.SOCK_DIAG_BY_FAMILY, 7, sock(unix.AF_INET6, tcpStateListen, 9000, 14)),                       // other family
		msg(unix.SOCK_DIAG_BY_FAMILY, 7, sock(unix.AF_INET, tcpStateListen, 9001, 0)),                         // no inode
		msg(unix.SOCK_DIAG_BY_FAMILY, 6, sock(unix.AF_INET, tcpStateListen, 9002, 15)),                        // stale dump
		msg(unix.SOCK_DIAG_BY_FAMILY, 7, append(sock(unix.AF_INET, tcpStateListen, 9003, 16), 1, 2, 3, 4, 5)), // attributes
	), unix.AF_INET, 7, want, out)
	require.NoError(t, err)
	assert.False(t, done)
	assert.Equal(t, map[uint64]uint16{11: 8080, 16: 9003}, out)

	done, err = parseDiag(msg(unix.NLMSG_DONE, 7, errno(0)), unix.AF_INET, 7, want, out)
	assert.True(t, done)
	assert.NoError(t, err)
	done, err = parseDiag(msg(unix.NLMSG_DONE, 6, errno(0)), unix.AF_INET, 7, want, out)
	assert.False(t, done, "done of a stale dump")
	assert.NoError(t, err)
	_, err = parseDiag(msg(unix.NLMSG_DONE, 7, errno(-int32(unix.EINTR))), unix.AF_INET, 7, want, out)
	assert.ErrorIs(t, err, unix.EINTR)
	_, err = parseDiag(msg(unix.NLMSG_ERROR, 7, errno(-int32(unix.ENOENT))), unix.AF_INET, 7, want, out)
	assert.ErrorIs(t, err, unix.ENOENT)
	_, err = parseDiag(msg(unix.SOCK_DIAG_BY_FAMILY, 7, make([]byte, 10)), unix.AF_INET, 7, want, out)
	assert.ErrorContains(t, err, "inet_diag message")
	_, err = parseDiag(msg(unix.SOCK_DIAG_BY_FAMILY, 7, sock(unix.AF_INET, tcpStateListen, 8080, 11))[:40], unix.AF_INET, 7, want, out)
	assert.ErrorContains(t, err, "length")
}

// TestDiagFallback: when netlink fails, the watcher reads /proc, and logs
// the failure once.
func TestDiagFallback(t *testing.T) {
	t.Run("fake proc", func(t *testing.T) {
		// The ns/net links of a fake tree lead nowhere: as for a pid that
		// exited, /proc is read, and netlink has not failed.
		f := newFakeProc(t)
		f.set(200, fakePID{comm: "a", start: 1, exe: "/bin/a", netns: 1, sockets: []uint64{5000}})
		f.set(201, fakePID{comm: "b", start: 1, exe: "/bin/b", netns: 2, sockets: []uint64{6000}})
		f.netTables(200, map[uint64]uint16{5000: 8080})
		f.netTables(201, map[uint64]uint16{6000: 8081})
		core, logs := observer.New(zapcore.DebugLevel)
		w := NewWatcher([]Criteria{{Ports: []PortRange{{8080, 8081}}}}, Options{ProcRoot: f.root}, zap.New(core))
		defer w.Close()
		a, _ := scan(t, w)
		assert.Equal(t, []int{200, 201}, a)
		f.set(202, fakePID{comm: "c", start: 1, exe: "/bin/c", netns: 3, sockets: []uint64{7000}})
		f.netTables(202, map[uint64]uint16{7000: 8080})
		a, _ = scan(t, w)
		assert.Equal(t, []int{202}, a)
		scan(t, w)
		assert.Zero(t, logs.FilterMessageSnippet("netlink failed").Len())
		assert.Empty(t, w.diag)
	})

	t.Run("live", func(t *testing.T) {
		port := freePort(t)
		srv := startServer(t, "127.0.0.1", port)
		link, err := os.Readlink("/proc/self/ns/net")
		require.NoError(t, err)
		netns, _ := nsInode([]byte(link))

		core, logs := observer.New(zapcore.DebugLevel)
		w := NewWatcher([]Criteria{{Ports: []PortRange{{uint16(port), uint16(port)}}}}, Options{}, zap.New(core))
		defer w.Close()
		// A socket that is not netlink: the dump fails.
		bad, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		w.diag[netns] = &diagSock{fd: bad}
		a, _ := scan(t, w)
		assert.Equal(t, []int{srv.Process.Pid}, a, "found through /proc")
		failures := logs.FilterMessageSnippet("netlink failed")
		require.Equal(t, 1, failures.Len())
		assert.Equal(t, zapcore.DebugLevel, failures.All()[0].Level)
		ds := w.diag[netns]
		require.NotNil(t, ds)
		assert.Equal(t, -1, ds.fd, "bad socket closed, namespace read from /proc")

		// Netlink is tried again after diagRetryEvery scans.
		ds.failed = w.gen + 1 - diagRetryEvery
		scan(t, w)
		scan(t, w)
		require.NotNil(t, w.diag[netns])
		assert.GreaterOrEqual(t, w.diag[netns].fd, 0)
		assert.Equal(t, 1, logs.FilterMessageSnippet("netlink failed").Len())
	})
}

// netnsOf returns the network namespace inode of /proc/<pid>.
func netnsOf(t *testing.T, pid string) uint64 {
	t.Helper()
	link, err := os.Readlink("/proc/" + pid + "/ns/net")
	require.NoError(t, err)
	ino, ok := nsInode([]byte(link))
	require.True(t, ok)
	return ino
}

// startInNetns runs a python listener on 0.0.0.0:port in a new network
// namespace and waits until it listens.
func startInNetns(t testing.TB, port int) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare")
	}
	py, err := pythonExe()
	require.NoError(t, err)
	cmd := exec.Command(unshare, "--net", py, "-S", "-c", `import socket, sys
s = socket.socket(); s.bind(("0.0.0.0", `+strconv.Itoa(port)+`)); s.listen()
sys.stdout.write("listening\n"); sys.stdout.flush()
sys.stdin.readline()`)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { stdin.Close(); stopServer(cmd) })
	if !bufio.NewScanner(stdout).Scan() {
		stopServer(cmd)
		t.Skipf("unshare --net failed: %v", cmd.ProcessState)
	}
	return cmd
}

// TestScanLiveOtherNetns selects a process listening in another network
// namespace through a sock_diag socket created there, and leaves every
// thread in our namespace.
func TestScanLiveOtherNetns(t *testing.T) {
	port := freePort(t)
	cmd := startInNetns(t, port)
	pid := cmd.Process.Pid
	netns := netnsOf(t, strconv.Itoa(pid))
	require.NotEqual(t, netnsOf(t, "self"), netns)

	core, logs := observer.New(zapcore.DebugLevel)
	w := NewWatcher([]Criteria{{Ports: []PortRange{{uint16(port), uint16(port)}}}}, Options{}, zap.New(core))
	defer w.Close()
	a, _ := scan(t, w)
	assert.Equal(t, []int{pid}, a)
	require.NotNil(t, w.diag[netns])
	assert.GreaterOrEqual(t, w.diag[netns].fd, 0, "read through netlink")
	assert.Zero(t, logs.FilterMessageSnippet("netlink failed").Len())

	// The namespace's listeners, as /proc shows them.
	procfd, err := openAt(unix.AT_FDCWD, "/proc", unix.O_RDONLY|unix.O_DIRECTORY)
	require.NoError(t, err)
	defer unix.Close(procfd)
	clear(w.listen)
	require.True(t, w.readListenDiag(procfd, pid, netns))
	assert.Equal(t, restrict(listenProc(t, strconv.Itoa(pid)), socketInodes(t, pid)), w.listen)
	assert.Len(t, w.listen, 1)

	// Every thread is back in our namespace.
	self := netnsOf(t, "self")
	tasks, err := os.ReadDir("/proc/self/task")
	require.NoError(t, err)
	for _, task := range tasks {
		assert.Equal(t, self, netnsOf(t, "self/task/"+task.Name()), "thread %s", task.Name())
	}

	// Once the namespace has no process to wait on, its socket is closed,
	// which lets the namespace go.
	stopServer(cmd)
	scan(t, w)
	assert.NotContains(t, w.diag, netns)
}

func BenchmarkListenNetlink(b *testing.B) {
	fd, err := openDiag()
	require.NoError(b, err)
	defer unix.Close(fd)
	out := map[uint64]uint16{}
	buf := make([]byte, 32<<10)
	seq := uint32(0)
	b.ReportAllocs()
	for b.Loop() {
		clear(out)
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			seq++
			if err := dumpListen(fd, family, seq, buf, allPorts, out); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(len(out)), "listeners")
}

func BenchmarkListenProc(b *testing.B) {
	out := map[uint64]uint16{}
	br := bufio.NewReaderSize(nil, 4096)
	tables := []string{"/proc/self/net/tcp"}
	if hasIPv6() {
		tables = append(tables, "/proc/self/net/tcp6")
	}
	b.ReportAllocs()
	for b.Loop() {
		clear(out)
		for _, table := range tables {
			fd, err := openAt(unix.AT_FDCWD, table, unix.O_RDONLY)
			if err != nil {
				b.Fatal(err)
			}
			br.Reset(fdReader(fd))
			err = parseListen(br, allPorts, out)
			unix.Close(fd)
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(len(out)), "listeners")
}

// BenchmarkOpenDiagIn is the one-off cost of a namespace's socket.
func BenchmarkOpenDiagIn(b *testing.B) {
	procfd, err := openAt(unix.AT_FDCWD, "/proc", unix.O_RDONLY|unix.O_DIRECTORY)
	require.NoError(b, err)
	defer unix.Close(procfd)
	bench := func(b *testing.B, pid int) {
		link, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/net")
		require.NoError(b, err)
		netns, _ := nsInode([]byte(link))
		for b.Loop() {
			var st unix.Stat_t
			nsfd, err := openNetns(procfd, pid, netns, &st)
			if err != nil {
				b.Fatal(err)
			}
			fd, err := openDiagIn(nsfd, &st)
			unix.Close(nsfd)
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
	}
	b.Run("own", func(b *testing.B) { bench(b, os.Getpid()) })
	b.Run("other", func(b *testing.B) {
		cmd := startInNetns(b, 8080)
		bench(b, cmd.Process.Pid)
	})
}
