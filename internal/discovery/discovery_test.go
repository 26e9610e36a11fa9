//go:build linux

package discovery

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const tcp4Sample = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 1002 1 0000000000000000 100 0 0 10 5
   2: 0100007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 100 0 0 10 0
   3: 0100007F:1F90 0100007F:D8B0 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
   4: 00000000:2329 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1005 1 0000000000000000 100 0 0 10 0
`

const tcp6Sample = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:2346 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000001000000:2346 00000000000000000000000001000000:A0C4 01 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 20 4 30 10 -1
`

func wantPorts(ranges ...PortRange) func(uint16) bool {
	return func(p uint16) bool {
		for _, r := range ranges {
			if r.Contains(p) {
				return true
			}
		}
		return false
	}
}

func TestParseListen(t *testing.T) {
	want := wantPorts(PortRange{8080, 8080}, PortRange{443, 443}, PortRange{9000, 9100})
	tests := []struct {
		name, text string
		want       map[uint64]uint16
	}{
		// 9001 (inode 1005) follows an ESTABLISHED line: the kernel never
		// prints a listener there, and the parser has stopped reading.
		{"tcp", tcp4Sample, map[uint64]uint16{1001: 8080, 1003: 9000}},
		{"tcp6", tcp6Sample, map[uint64]uint16{2001: 443, 2002: 9030}},
		{"header only", strings.SplitAfter(tcp4Sample, "\n")[0], map[uint64]uint16{}},
		{"no trailing newline", strings.TrimSuffix(strings.SplitAfterN(tcp6Sample, "\n", 3)[0]+strings.SplitAfterN(tcp6Sample, "\n", 3)[1], "\n"), map[uint64]uint16{2001: 443}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[uint64]uint16{}
			require.NoError(t, parseListen(bufio.NewReader(strings.NewReader(tt.text)), want, got))
			assert.Equal(t, tt.want, got)
		})
	}

	got := map[uint64]uint16{}
	err := parseListen(bufio.NewReader(strings.NewReader("header\n 0: 00000000:1F90 0A\n")), want, got)
	assert.ErrorContains(t, err, "fields")
	err = parseListen(bufio.NewReader(strings.NewReader(strings.Replace(tcp4Sample, ":1F90 ", ":XYZW ", 1))), want, got)
	assert.ErrorContains(t, err, "local address")
}

// TestParseListenLive checks the early stop against this kernel: parsing
// /proc/net/tcp must find every listener that a full read finds.
func TestParseListenLive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	conn, err := net.Dial("tcp", ln.Addr().String()) // an ESTABLISHED pair
	require.NoError(t, err)
	defer conn.Close()

	all := func(uint16) bool { return true }
	got := map[uint64]uint16{}
	f, err := os.Open("/proc/net/tcp")
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, parseListen(bufio.NewReader(f), all, got))

	full, err := os.ReadFile("/proc/net/tcp")
	require.NoError(t, err)
	want := map[uint64]uint16{}
	for _, line := range strings.Split(string(full), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != tcpListen {
			continue
		}
		port, _ := strconv.ParseUint(f[1][strings.LastIndexByte(f[1], ':')+1:], 16, 16)
		ino, _ := strconv.ParseUint(f[9], 10, 64)
		want[ino] = uint16(port)
	}
	ours := uint16(ln.Addr().(*net.TCPAddr).Port)
	found := false
	for ino, port := range want {
		// Other listeners on the host may come and go between the reads.
		if port == ours {
			found = true
			assert.Equal(t, port, got[ino], "listener %d found by a full read, missed by parseListen", port)
		}
	}
	assert.True(t, found, "full read lists our listener")
}

func TestParseStat(t *testing.T) {
	s, err := parseStat([]byte("42 (a) (b c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10 18446744073709551615\n"))
	require.NoError(t, err)
	assert.Equal(t, byte('S'), s.state)
	assert.Equal(t, uint64(123456), s.start)

	_, err = parseStat([]byte("42 (x) S 1 2 3\n"))
	assert.Error(t, err)
	_, err = parseStat([]byte("garbage"))
	assert.Error(t, err)
}

func TestPortRange(t *testing.T) {
	tests := []struct {
		r    PortRange
		p    uint16
		want bool
	}{
		{PortRange{80, 80}, 80, true},
		{PortRange{80, 80}, 81, false},
		{PortRange{8000, 8999}, 8000, true},
		{PortRange{8000, 8999}, 8999, true},
		{PortRange{8000, 8999}, 7999, false},
		{PortRange{8000, 8999}, 9000, false},
		{PortRange{0, 65535}, 65535, true},
		{PortRange{10, 5}, 7, false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, tt.r.Contains(tt.p), "%v contains %d", tt.r, tt.p)
	}
	c := Criteria{Ports: []PortRange{{80, 80}, {8000, 8099}}}
	assert.True(t, c.matchesPort(80))
	assert.True(t, c.matchesPort(8050))
	assert.False(t, c.matchesPort(443))
}

func TestMatchExe(t *testing.T) {
	tests := []struct {
		glob, exe string
		want      bool
	}{
		{"*python3*", "/usr/bin/python3.11", true},
		{"*python3*", "/root/.pyenv/versions/3.11.7/bin/python3.11", true},
		{"python3.1?", "/usr/bin/python3.11", true},
		{"java", "/usr/lib/jvm/bin/java", true},
		{"java", "/usr/bin/javac", false},
		{"/usr/bin/*", "/usr/bin/node", true},
		{"/usr/bin/*", "/usr/local/bin/node", false},
		{"/usr/*/node", "/usr/bin/node", true},
		{"*/node", "/usr/bin/node", true},       // '*' crosses '/'
		{"*/node", "/usr/bin/nodejs", false},    // has '/': full path only
		{"/usr/*", "/usr/local/bin/node", true}, // '*' crosses '/'
		{"/usr/bin/node", "/usr/bin/node", true},
		{"[", "/usr/bin/node", false}, // malformed
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, matchExe(tt.glob, tt.exe), "glob %q exe %q", tt.glob, tt.exe)
	}
}

func TestCriteriaMatchesStatic(t *testing.T) {
	assert.False(t, Criteria{}.matchesStatic(1, "/bin/sh"), "empty criteria matches nothing")
	assert.True(t, Criteria{PID: 7}.matchesStatic(7, "/bin/sh"))
	assert.False(t, Criteria{PID: 7}.matchesStatic(8, "/bin/sh"))
	assert.True(t, Criteria{PID: 7, ExeGlob: "sh"}.matchesStatic(7, "/bin/sh"))
	assert.False(t, Criteria{PID: 7, ExeGlob: "bash"}.matchesStatic(7, "/bin/sh"), "fields are ANDed")
	assert.True(t, Criteria{Ports: []PortRange{{80, 80}}}.matchesStatic(9, "/x"), "ports are checked apart")
}

func TestCriteriaValidate(t *testing.T) {
	assert.NoError(t, Criteria{Ports: []PortRange{{80, 90}}, ExeGlob: "java", PID: 3}.Validate())
	assert.ErrorContains(t, Criteria{}.Validate(), "no field set")
	assert.ErrorContains(t, Criteria{Ports: []PortRange{{90, 80}}}.Validate(), "90-80")
	assert.ErrorContains(t, Criteria{ExeGlob: "["}.Validate(), `exe glob "["`)
	assert.ErrorContains(t, Criteria{PID: -1}.Validate(), "pid -1")
}

func TestProcHelpers(t *testing.T) {
	ino, ok := socketInode([]byte("socket:[12345]"))
	assert.True(t, ok)
	assert.Equal(t, uint64(12345), ino)
	for _, bad := range []string{"pipe:[1]", "socket:[]", "socket:[x]", "/dev/null", "socket:[1"} {
		_, ok := socketInode([]byte(bad))
		assert.False(t, ok, bad)
	}
	ino, ok = nsInode([]byte("net:[4026531840]"))
	assert.True(t, ok)
	assert.Equal(t, uint64(4026531840), ino)

	for name, want := range map[string]int{"1": 1, "4194304": 4194304, "self": 0, "0": 0, "": 0, "12a": 0} {
		got, _ := parsePID([]byte(name))
		assert.Equal(t, want, got, name)
	}
}

// fakeProc builds a procfs-shaped tree for the cases a live system cannot
// produce on demand: pid reuse, exec, zombies, other network namespaces.
type fakeProc struct {
	t    *testing.T
	root string
}

type fakePID struct {
	comm    string
	state   byte
	start   uint64
	exe     string // "" for no exe link (kernel thread)
	netns   uint64
	sockets []uint64
	environ string
}

func newFakeProc(t *testing.T) *fakeProc {
	return &fakeProc{t: t, root: t.TempDir()}
}

func (f *fakeProc) set(pid int, p fakePID) {
	t := f.t
	dir := filepath.Join(f.root, strconv.Itoa(pid))
	require.NoError(t, os.RemoveAll(dir))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "fd"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "ns"), 0o755))
	if p.state == 0 {
		p.state = 'S'
	}
	stat := fmt.Sprintf("%d (%s) %c 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0\n", pid, p.comm, p.state, p.start)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644))
	if p.exe != "" {
		require.NoError(t, os.Symlink(p.exe, filepath.Join(dir, "exe")))
	}
	require.NoError(t, os.Symlink(fmt.Sprintf("net:[%d]", p.netns), filepath.Join(dir, "ns", "net")))
	for i, s := range p.sockets {
		require.NoError(t, os.Symlink(fmt.Sprintf("socket:[%d]", s), filepath.Join(dir, "fd", strconv.Itoa(i+3))))
	}
	require.NoError(t, os.Symlink("/dev/null", filepath.Join(dir, "fd", "0")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cmdline"), []byte(p.exe+"\x00--flag\x00"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "environ"), []byte(p.environ), 0o644))
	f.netTables(pid, nil)
}

// netTables writes pid's net/tcp listing a LISTEN socket per inode -> port.
func (f *fakeProc) netTables(pid int, listen map[uint64]uint16) {
	dir := filepath.Join(f.root, strconv.Itoa(pid), "net")
	require.NoError(f.t, os.MkdirAll(dir, 0o755))
	var b strings.Builder
	b.WriteString(strings.SplitAfter(tcp4Sample, "\n")[0])
	for ino, port := range listen {
		fmt.Fprintf(&b, "   0: 00000000:%04X 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 %d 1 0 100 0 0 10 0\n", port, ino)
	}
	require.NoError(f.t, os.WriteFile(filepath.Join(dir, "tcp"), []byte(b.String()), 0o644))
	require.NoError(f.t, os.WriteFile(filepath.Join(dir, "tcp6"), []byte(strings.SplitAfter(tcp6Sample, "\n")[0]), 0o644))
}

func (f *fakeProc) remove(pid int) {
	require.NoError(f.t, os.RemoveAll(filepath.Join(f.root, strconv.Itoa(pid))))
}

func pidsOf(ps []Process) []int {
	out := make([]int, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.PID)
	}
	return out
}

func scan(t *testing.T, w *Watcher) ([]int, []int) {
	t.Helper()
	added, removed, err := w.Scan()
	require.NoError(t, err)
	return pidsOf(added), removed
}

func TestFakeProcLifecycle(t *testing.T) {
	f := newFakeProc(t)
	f.set(2, fakePID{comm: "kthreadd", start: 1}) // no exe link
	f.set(100, fakePID{comm: "server", start: 10, exe: "/srv/bin/server", environ: "A=1\x00OTEL_SERVICE_NAME=checkout\x00"})
	f.set(101, fakePID{comm: "sh", start: 11, exe: "/bin/sh"})
	f.set(102, fakePID{comm: "other", start: 12, exe: "/bin/other"})
	require.NoError(t, os.MkdirAll(filepath.Join(f.root, "103"), 0o755)) // vanished: no stat
	require.NoError(t, os.WriteFile(filepath.Join(f.root, "uptime"), nil, 0o644))

	w := NewWatcher([]Criteria{{ExeGlob: "server"}, {ExeGlob: "*"}}, Options{ProcRoot: f.root, ExcludePIDs: []int{102}}, nil)
	added, removed, err := w.Scan()
	require.NoError(t, err)
	assert.Equal(t, []int{100, 101}, pidsOf(added), "kernel thread and excluded pid are skipped")
	assert.Empty(t, removed)
	p := added[0]
	assert.Equal(t, 100, p.PID)
	assert.Equal(t, "/srv/bin/server", p.ExePath)
	assert.Equal(t, "server", p.ExeName)
	assert.Equal(t, "checkout", p.ServiceName)
	assert.Equal(t, []string{"/srv/bin/server", "--flag"}, p.Cmdline)
	assert.Equal(t, "checkout", p.Resource.ServiceName)
	assert.Equal(t, "/srv/bin/server", p.Resource.ExePath)
	assert.Equal(t, "sh", added[1].ServiceName)

	a, r := scan(t, w)
	assert.Empty(t, a, "nothing changed")
	assert.Empty(t, r)

	// pid reuse: same pid, new start time.
	f.set(100, fakePID{comm: "server", start: 20, exe: "/srv/bin/server"})
	a, r = scan(t, w)
	assert.Equal(t, []int{100}, a)
	assert.Equal(t, []int{100}, r)

	// zombie, then reaped: removed once.
	f.set(101, fakePID{comm: "sh", start: 11, state: 'Z'})
	a, r = scan(t, w)
	assert.Empty(t, a)
	assert.Equal(t, []int{101}, r)
	f.remove(101)
	a, r = scan(t, w)
	assert.Empty(t, a)
	assert.Empty(t, r)

	f.remove(100)
	a, r = scan(t, w)
	assert.Empty(t, a)
	assert.Equal(t, []int{100}, r)
}

func TestFakeProcExec(t *testing.T) {
	f := newFakeProc(t)
	f.set(100, fakePID{comm: "sh", start: 10, exe: "/bin/sh"})
	w := NewWatcher([]Criteria{{ExeGlob: "/opt/*/server"}}, Options{ProcRoot: f.root}, nil)
	a, _ := scan(t, w)
	assert.Empty(t, a)

	f.set(100, fakePID{comm: "server", start: 10, exe: "/opt/app/server"})
	a = nil
	for range exeRecheckEvery {
		added, _ := scan(t, w)
		a = append(a, added...)
	}
	assert.Equal(t, []int{100}, a, "exec is noticed through the exe link within exeRecheckEvery scans")

	f.set(100, fakePID{comm: "sh", start: 10, exe: "/bin/sh"})
	a, r := scan(t, w)
	assert.Empty(t, a)
	assert.Empty(t, r, "a selected process stays selected until it exits")
}

func TestFakeProcPorts(t *testing.T) {
	f := newFakeProc(t)
	// Two network namespaces, each with a listener on 8080; a third process
	// waits for its socket to appear; a java process on 9090 is wanted only
	// with the java criteria.
	f.set(200, fakePID{comm: "a", start: 1, exe: "/bin/a", netns: 1, sockets: []uint64{5000}})
	f.set(201, fakePID{comm: "b", start: 1, exe: "/bin/b", netns: 2, sockets: []uint64{6000}})
	f.set(202, fakePID{comm: "c", start: 1, exe: "/bin/c", netns: 1, sockets: []uint64{7000}})
	f.set(203, fakePID{comm: "java", start: 1, exe: "/usr/bin/java", netns: 1, sockets: []uint64{8000}})
	f.set(204, fakePID{comm: "node", start: 1, exe: "/usr/bin/node", netns: 1, sockets: []uint64{8001}})
	f.set(205, fakePID{comm: "d", start: 1, exe: "/bin/d", netns: 1, sockets: []uint64{5001}})
	ns1 := map[uint64]uint16{5000: 8080, 8000: 9090, 8001: 9090, 5001: 22}
	writeNS1 := func() {
		for _, pid := range []int{200, 202, 203, 204, 205} {
			f.netTables(pid, ns1)
		}
	}
	writeNS1()
	f.netTables(201, map[uint64]uint16{6000: 8080})

	w := NewWatcher([]Criteria{
		{Ports: []PortRange{{8080, 8080}}},
		{Ports: []PortRange{{9000, 9999}}, ExeGlob: "java"},
	}, Options{ProcRoot: f.root}, nil)
	a, _ := scan(t, w)
	assert.Equal(t, []int{200, 201, 203}, a)

	// 202's socket starts listening: the wanted set grows, waiting pids are
	// read again.
	ns1[7000] = 8080
	writeNS1()
	a, _ = scan(t, w)
	assert.Equal(t, []int{202}, a)

	// No new wanted listener: fds of waiting processes are not read again,
	// so a socket that moves into 205 unannounced is not seen...
	f.set(205, fakePID{comm: "d", start: 1, exe: "/bin/d", netns: 1, sockets: []uint64{5000}})
	writeNS1()
	a, _ = scan(t, w)
	assert.Empty(t, a)
	// ...until a wanted listener appears anywhere.
	ns1[7001] = 8080
	writeNS1()
	a, _ = scan(t, w)
	assert.Equal(t, []int{205}, a)

	// A new pid is always read, and one whose first table read fails (here:
	// no tables for 206) is covered by another pid of the namespace.
	f.set(206, fakePID{comm: "e", start: 1, exe: "/bin/e", netns: 1, sockets: []uint64{5000}})
	require.NoError(t, os.RemoveAll(filepath.Join(f.root, "206", "net")))
	f.netTables(201, map[uint64]uint16{6000: 8080, 6001: 22}) // a change, but no wanted one
	a, _ = scan(t, w)
	assert.Equal(t, []int{206}, a)
}

// Live tests: real processes in the real /proc.

var pythonExe = sync.OnceValues(func() (string, error) {
	out, err := exec.Command("python3", "-c", "import os, sys; print(os.path.realpath(sys.executable))").Output()
	return strings.TrimSpace(string(out)), err
})

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startServer starts python's http.server on bind:port (the resolved
// interpreter, not the pyenv shim, so that the pid runs python from the
// start) and waits until it accepts connections.
func startServer(t *testing.T, bind string, port int) *exec.Cmd {
	t.Helper()
	py, err := pythonExe()
	require.NoError(t, err)
	cmd := exec.Command(py, "-m", "http.server", strconv.Itoa(port), "--bind", bind)
	cmd.Env = append(os.Environ(), "OTEL_SERVICE_NAME=discovery-test")
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { stopServer(cmd) })
	addr := net.JoinHostPort(bind, strconv.Itoa(port))
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 5*time.Second, 10*time.Millisecond, "http.server on %s", addr)
	return cmd
}

func stopServer(cmd *exec.Cmd) {
	if cmd.ProcessState == nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// scanOnce runs one scan with a new watcher.
func scanOnce(t *testing.T, criteria []Criteria, opts Options) []Process {
	t.Helper()
	w := NewWatcher(criteria, opts, nil)
	defer w.Close()
	added, _, err := w.Scan()
	require.NoError(t, err)
	return added
}

func findProcess(ps []Process, pid int) (Process, bool) {
	for _, p := range ps {
		if p.PID == pid {
			return p, true
		}
	}
	return Process{}, false
}

func TestScanLive(t *testing.T) {
	port := freePort(t)
	srv := startServer(t, "127.0.0.1", port)
	pid := srv.Process.Pid
	py, _ := pythonExe()

	tests := []struct {
		name     string
		criteria []Criteria
	}{
		{"port", []Criteria{{Ports: []PortRange{{uint16(port), uint16(port)}}}}},
		{"port range and exe", []Criteria{{Ports: []PortRange{{uint16(port) - 1, uint16(port) + 1}}, ExeGlob: "*python3*"}}},
		{"exe glob", []Criteria{{ExeGlob: "*python3*"}}},
		{"exe path", []Criteria{{ExeGlob: py}}},
		{"pid", []Criteria{{PID: pid}}},
		{"any of", []Criteria{{PID: 1 << 30}, {ExeGlob: "nomatch"}, {PID: pid}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWatcher(tt.criteria, Options{}, nil)
			defer w.Close()
			added, removed, err := w.Scan()
			require.NoError(t, err)
			assert.Empty(t, removed)
			p, ok := findProcess(added, pid)
			require.True(t, ok, "pid %d not in %v", pid, pidsOf(added))
			assert.Equal(t, py, p.ExePath)
			assert.Equal(t, filepath.Base(py), p.ExeName)
			assert.Equal(t, "discovery-test", p.ServiceName)
			assert.Contains(t, p.Cmdline, "http.server")
		})
	}

	t.Run("not matching", func(t *testing.T) {
		for _, c := range []Criteria{
			{Ports: []PortRange{{uint16(port) + 1, uint16(port) + 1}}},
			{Ports: []PortRange{{uint16(port), uint16(port)}}, ExeGlob: "java"},
			{PID: pid, ExeGlob: "java"},
			{},
		} {
			added := scanOnce(t, []Criteria{c}, Options{})
			_, ok := findProcess(added, pid)
			assert.False(t, ok, "criteria %+v", c)
		}
	})

	t.Run("excluded", func(t *testing.T) {
		added := scanOnce(t, []Criteria{{PID: pid}, {ExeGlob: "*python3*"}}, Options{ExcludePIDs: []int{pid}})
		_, ok := findProcess(added, pid)
		assert.False(t, ok)
	})
}

func TestScanLiveIPv6(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp6"); err != nil {
		t.Skip("no IPv6 in this network namespace")
	}
	port := freePort(t)
	srv := startServer(t, "::1", port)
	added := scanOnce(t, []Criteria{{Ports: []PortRange{{uint16(port), uint16(port)}}}}, Options{})
	assert.Equal(t, []int{srv.Process.Pid}, pidsOf(added))
}

func TestScanLiveAddedAndRemoved(t *testing.T) {
	port := freePort(t)
	w := NewWatcher([]Criteria{{Ports: []PortRange{{uint16(port), uint16(port)}}}}, Options{}, nil)
	defer w.Close()
	a, r := scan(t, w)
	require.Empty(t, a)
	require.Empty(t, r)
	assert.True(t, w.usePIDFD, "the real /proc is our pid namespace")
	assert.Equal(t, os.Getpid(), w.self)

	srv := startServer(t, "127.0.0.1", port)
	a, r = scan(t, w)
	assert.Equal(t, []int{srv.Process.Pid}, a)
	assert.Empty(t, r)
	assert.GreaterOrEqual(t, w.procs[srv.Process.Pid].pidfd, 0)

	a, r = scan(t, w)
	assert.Empty(t, a, "reported once")
	assert.Empty(t, r)

	// Killed but not reaped: a zombie is removed.
	require.NoError(t, srv.Process.Kill())
	var removed []int
	require.Eventually(t, func() bool {
		a, r := scan(t, w)
		assert.Empty(t, a)
		removed = append(removed, r...)
		return len(removed) > 0
	}, 2*time.Second, 10*time.Millisecond)
	assert.Equal(t, []int{srv.Process.Pid}, removed)
	stopServer(srv)
	a, r = scan(t, w)
	assert.Empty(t, a)
	assert.Empty(t, r, "removed once")
}

func TestClose(t *testing.T) {
	port := freePort(t)
	srv := startServer(t, "127.0.0.1", port)
	w := NewWatcher([]Criteria{{PID: srv.Process.Pid}}, Options{}, nil)
	a, _ := scan(t, w)
	require.Equal(t, []int{srv.Process.Pid}, a)
	fd := w.procs[srv.Process.Pid].pidfd
	require.GreaterOrEqual(t, fd, 0)
	require.NoError(t, w.Close())
	require.NoError(t, w.Close())
	assert.ErrorIs(t, unix.Fstat(fd, &unix.Stat_t{}), unix.EBADF, "pidfd closed")
	a, _ = scan(t, w)
	assert.Equal(t, []int{srv.Process.Pid}, a, "state is forgotten")
	require.NoError(t, w.Close())
}

// TestScanLiveListensLater covers a process that is already known when its
// listening socket appears.
func TestScanLiveListensLater(t *testing.T) {
	py, err := pythonExe()
	require.NoError(t, err)
	port := freePort(t)
	cmd := exec.Command(py, "-S", "-c", `import socket, sys
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
s = socket.socket(); s.bind(("127.0.0.1", `+strconv.Itoa(port)+`)); s.listen()
sys.stdout.write("listening\n"); sys.stdout.flush()
sys.stdin.readline()`)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer stopServer(cmd)
	lines := bufio.NewScanner(stdout)
	require.True(t, lines.Scan())

	w := NewWatcher([]Criteria{{Ports: []PortRange{{uint16(port), uint16(port)}}}}, Options{}, nil)
	defer w.Close()
	a, _ := scan(t, w)
	require.Empty(t, a)

	_, err = stdin.Write([]byte("\n"))
	require.NoError(t, err)
	require.True(t, lines.Scan())
	a, _ = scan(t, w)
	assert.Equal(t, []int{cmd.Process.Pid}, a)
	stdin.Close()
}

func TestScanNeverSelectsSelf(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	self, err := os.Executable()
	require.NoError(t, err)

	w := NewWatcher([]Criteria{
		{PID: os.Getpid()},
		{Ports: []PortRange{{port, port}}},
		{ExeGlob: self},
		{ExeGlob: filepath.Base(self)},
	}, Options{}, nil)
	defer w.Close()
	added, _, err := w.Scan()
	require.NoError(t, err)
	_, ok := findProcess(added, os.Getpid())
	assert.False(t, ok)
}

func TestRunNudge(t *testing.T) {
	port1, port2 := freePort(t), freePort(t)
	srv1 := startServer(t, "127.0.0.1", port1)

	w := NewWatcher([]Criteria{{Ports: []PortRange{{uint16(port1), uint16(port1)}, {uint16(port2), uint16(port2)}}}},
		Options{Interval: time.Hour}, nil)
	defer w.Close()
	adds, removes := make(chan Process, 4), make(chan int, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, func(p Process) { adds <- p }, func(pid int) { removes <- pid })
	}()
	defer func() { cancel(); <-done }()

	// The first scan runs at once.
	select {
	case p := <-adds:
		assert.Equal(t, srv1.Process.Pid, p.PID)
	case <-time.After(2 * time.Second):
		t.Fatal("first scan did not report the running server")
	}

	// With a one hour interval, only a nudge finds the second server.
	srv2 := startServer(t, "127.0.0.1", port2)
	w.Nudge()
	w.Nudge() // coalesced, never blocks
	select {
	case p := <-adds:
		assert.Equal(t, srv2.Process.Pid, p.PID)
	case <-time.After(time.Second):
		t.Fatal("nudge did not deliver onAdd within 1s")
	}

	stopServer(srv2)
	w.Nudge()
	select {
	case pid := <-removes:
		assert.Equal(t, srv2.Process.Pid, pid)
	case <-time.After(time.Second):
		t.Fatal("nudge did not deliver onRemove within 1s")
	}
}

func BenchmarkScan(b *testing.B) {
	n := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, ok := parsePID([]byte(e.Name())); ok {
			n++
		}
	}
	for _, bc := range []struct {
		name     string
		criteria []Criteria
	}{
		// Nothing matches, so every process keeps being checked.
		{"exe", []Criteria{{ExeGlob: "no-such-exe"}}},
		{"ports", []Criteria{{Ports: []PortRange{{1, 1}}}}},
		{"ports+exe", []Criteria{{Ports: []PortRange{{1, 1}}, ExeGlob: "no-such-exe"}}},
	} {
		b.Run(bc.name+"/steady", func(b *testing.B) {
			w := NewWatcher(bc.criteria, Options{}, nil)
			defer w.Close()
			if _, _, err := w.Scan(); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := w.Scan(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n), "procs")
		})
		b.Run(bc.name+"/cold", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				w := NewWatcher(bc.criteria, Options{}, nil)
				if _, _, err := w.Scan(); err != nil {
					b.Fatal(err)
				}
				w.Close()
			}
			b.ReportMetric(float64(n), "procs")
		})
	}
}
