//go:build linux

package discovery

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ebpftracing/ebpftracingreceiver/internal/procres"
)

// Process is a selected process.
type Process struct {
	PID int
	// ExePath is the /proc/<pid>/exe target, without a " (deleted)" suffix.
	ExePath string
	// ExeName is the base name of ExePath.
	ExeName string
	// ServiceName is OTEL_SERVICE_NAME from the process environment if set,
	// else service.name of its OTEL_RESOURCE_ATTRIBUTES, else ExeName.
	ServiceName string
	// Cmdline is the command line, bounded as Resource.CommandArgs.
	Cmdline []string
	// Resource is the process's resource, read once on selection.
	Resource procres.Info
}

// Options tunes a [Watcher].
type Options struct {
	// ProcRoot is where procfs is mounted. Default "/proc".
	ProcRoot string
	// Interval between scans in [Watcher.Run]. Default 500ms.
	Interval time.Duration
	// ExcludePIDs are never selected. The calling process (os.Getpid) is
	// always excluded.
	ExcludePIDs []int
}

const (
	defaultProcRoot = "/proc"
	defaultInterval = 500 * time.Millisecond

	// exeRecheckEvery spreads the exec check of known, unselected processes
	// over this many scans: each pid's exe link is read again once every
	// exeRecheckEvery scans (2s at the default interval), which keeps the
	// steady cost a quarter of one readlink per process per scan.
	exeRecheckEvery = 4
)

// procState is what the watcher remembers about one pid between scans.
type procState struct {
	exeHash uint64 // of the /proc/<pid>/exe target: a change means exec or pid reuse
	// exe is kept only while it can still matter: for a waiting process.
	exe   string
	netns uint64 // inode of /proc/<pid>/ns/net; 0 if unknown
	gen   uint64 // scan in which the pid was last seen

	// ignored: no readable exe (kernel thread, zombie, not ours to read).
	// Not a candidate while it stays in /proc.
	ignored  bool
	selected bool
	// waiting: not selected, and the non-port fields of a Criteria with
	// Ports match, so its sockets decide.
	waiting bool
	// fdScan: waiting and its fds have not been read since it appeared or
	// exec'd.
	fdScan bool
	// match: selected during the current scan, to be reported as added.
	match bool

	// pidfd watches a selected process for its exit; -1 if pidfd_open
	// failed, then start (stat field 22) detects exit and pid reuse.
	pidfd int
	start uint64
}

// Watcher finds the processes that match a set of [Criteria]. Create it with
// [NewWatcher], drive it with [Watcher.Run] or [Watcher.Scan], and release it
// with [Watcher.Close].
type Watcher struct {
	criteria []Criteria
	ports    []PortRange // union of all Criteria ports
	// recheckExe: some Criteria has an ExeGlob, so an exec of a known,
	// unselected process can change the outcome.
	recheckExe bool
	procRoot   string
	interval   time.Duration
	exclude    map[int]struct{}
	logger     *zap.Logger
	// self is our pid as ProcRoot numbers it, found on the first scan;
	// pidfds are used only when that is os.Getpid(), i.e. ProcRoot shows
	// our pid namespace.
	self     int
	usePIDFD bool
	nudge    chan struct{}
	seed     maphash.Seed

	mu      sync.Mutex // serialises Scan and Close
	gen     uint64
	procs   map[int]*procState
	pids    []int
	matched []int
	pollFDs []unix.PollFd
	pollPID []int
	// listen maps the inode of each LISTEN socket on a wanted port to the
	// port, for this scan; prevListen is the previous scan's.
	listen, prevListen map[uint64]uint16
	nsRead             map[uint64]bool // netns -> tables read in this scan
	// diag holds a sock_diag socket per network namespace read in the
	// last scan (diag.go).
	diag       map[uint64]*diagSock
	diagSeq    uint32
	diagLogged bool // a netlink failure was logged
	// bootID is the host's boot id for service.instance.id, read on the
	// first selection.
	bootID   string
	bootRead bool
	dirBuf   []byte
	statBuf  []byte
	linkBuf  []byte
	br       *bufio.Reader
}

// NewWatcher returns a watcher for processes matching any of criteria. It
// does no I/O. A nil logger logs nothing.
func NewWatcher(criteria []Criteria, opts Options, logger *zap.Logger) *Watcher {
	if logger == nil {
		logger = zap.NewNop()
	}
	if opts.ProcRoot == "" {
		opts.ProcRoot = defaultProcRoot
	}
	if opts.Interval <= 0 {
		opts.Interval = defaultInterval
	}
	w := &Watcher{
		criteria:   slices.Clone(criteria),
		procRoot:   opts.ProcRoot,
		interval:   opts.Interval,
		exclude:    make(map[int]struct{}),
		logger:     logger,
		nudge:      make(chan struct{}, 1),
		seed:       maphash.MakeSeed(),
		procs:      make(map[int]*procState),
		listen:     make(map[uint64]uint16),
		prevListen: make(map[uint64]uint16),
		nsRead:     make(map[uint64]bool),
		diag:       make(map[uint64]*diagSock),
		dirBuf:     make([]byte, 32<<10),
		statBuf:    make([]byte, 1024),
		linkBuf:    make([]byte, unix.PathMax+1),
		br:         bufio.NewReaderSize(nil, 4096),
	}
	for _, p := range opts.ExcludePIDs {
		w.exclude[p] = struct{}{}
	}
	for _, c := range criteria {
		if !c.empty() {
			w.ports = append(w.ports, c.Ports...)
			w.recheckExe = w.recheckExe || c.ExeGlob != ""
		}
	}
	return w
}

// Nudge asks a running [Watcher.Run] to scan now. It never blocks, and
// nudges that arrive before the scan starts are coalesced into one.
func (w *Watcher) Nudge() {
	select {
	case w.nudge <- struct{}{}:
	default:
	}
}

// Run scans immediately, then every interval and on each [Watcher.Nudge],
// until ctx is done. Changes are delivered from the Run goroutine, removals
// of a scan before its additions (a reused pid is removed, then added). Run
// does not close the watcher.
func (w *Watcher) Run(ctx context.Context, onAdd func(Process), onRemove func(pid int)) {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	var lastErr string
	for {
		added, removed, err := w.Scan()
		switch {
		case err != nil && err.Error() != lastErr:
			w.logger.Warn("process discovery scan failed", zap.Error(err))
			lastErr = err.Error()
		case err == nil:
			lastErr = ""
		}
		for _, pid := range removed {
			onRemove(pid)
		}
		for _, p := range added {
			onAdd(p)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.nudge:
		}
	}
}

// Close releases the pidfds held for selected processes and the netlink
// sockets, and forgets all state: a later Scan reports every matching
// process as added again. It is safe to call more than once.
func (w *Watcher) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closeDiag(true)
	for pid, st := range w.procs {
		st.closePIDFD()
		delete(w.procs, pid)
	}
	return nil
}

func (st *procState) closePIDFD() {
	if st.selected && st.pidfd >= 0 {
		unix.Close(st.pidfd)
		st.pidfd = -1
	}
}

// Scan does one pass over /proc and returns the processes selected since the
// previous pass and the selected pids that have exited since (including
// zombies and reused pids). A process that vanishes or denies access
// mid-scan is skipped, not an error; the error is for /proc itself.
func (w *Watcher) Scan() (added []Process, removed []int, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()

	procfd, err := openAt(unix.AT_FDCWD, w.procRoot, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", w.procRoot, err)
	}
	defer unix.Close(procfd)

	w.pids = w.pids[:0]
	err = readDirNames(procfd, w.dirBuf, func(name []byte) {
		if pid, ok := parsePID(name); ok {
			w.pids = append(w.pids, pid)
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", w.procRoot, err)
	}

	if w.self == 0 {
		w.findSelf(procfd)
	}
	// Exits first, so that a reused pid is seen as new in this same pass.
	removed = w.reapSelected(procfd, removed)
	w.gen++
	w.matched = w.matched[:0]
	for _, pid := range w.pids {
		if _, ok := w.exclude[pid]; !ok && pid != w.self {
			w.observe(procfd, pid)
		}
	}
	for pid, st := range w.procs {
		if st.gen != w.gen {
			if st.selected {
				removed = append(removed, pid)
				st.closePIDFD()
			}
			delete(w.procs, pid)
		}
	}
	if len(w.ports) > 0 {
		w.matchPorts(procfd)
	}
	slices.Sort(w.matched)
	for _, pid := range w.matched {
		st := w.procs[pid]
		st.match, st.selected, st.waiting, st.fdScan = false, true, false, false
		st.pidfd = w.watchExit(procfd, pid, &st.start)
		added = append(added, w.describe(pid, st.exe))
		st.exe = ""
	}
	slices.Sort(removed)
	if len(added) > 0 || len(removed) > 0 {
		w.logger.Debug("process discovery changes",
			zap.Int("added", len(added)), zap.Int("removed", len(removed)), zap.Int("pids", len(w.pids)))
	}
	return added, removed, nil
}

// findSelf finds our own pid in ProcRoot's pid namespace, which differs
// from os.Getpid() when ProcRoot is, say, the host's /proc mounted into a
// container.
func (w *Watcher) findSelf(procfd int) {
	w.self = os.Getpid()
	link, err := readLinkAt(procfd, "self", w.linkBuf)
	if err != nil {
		return // not a real procfs (tests), keep os.Getpid()
	}
	if pid, ok := parsePID(link); ok {
		w.self = pid
		w.usePIDFD = pid == os.Getpid()
	}
}

// watchExit returns a pidfd for pid, or -1 and the start time in start when
// pidfd_open is not available.
func (w *Watcher) watchExit(procfd, pid int, start *uint64) int {
	if w.usePIDFD {
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			return fd
		}
	}
	if info, err := w.readStat(procfd, pid); err == nil {
		*start = info.start
	}
	return -1
}

// reapSelected drops the selected processes that exited: their pidfd polls
// readable (zombie or reaped, even if the pid is already reused), or without
// a pidfd their stat is gone, a zombie, or has another start time.
func (w *Watcher) reapSelected(procfd int, removed []int) []int {
	w.pollFDs, w.pollPID = w.pollFDs[:0], w.pollPID[:0]
	for pid, st := range w.procs {
		if !st.selected {
			continue
		}
		if st.pidfd >= 0 {
			w.pollFDs = append(w.pollFDs, unix.PollFd{Fd: int32(st.pidfd), Events: unix.POLLIN})
			w.pollPID = append(w.pollPID, pid)
			continue
		}
		info, err := w.readStat(procfd, pid)
		if (err != nil && gone(err)) || (err == nil && (info.start != st.start || info.state == 'Z' || info.state == 'X')) {
			removed = append(removed, pid)
			delete(w.procs, pid)
		}
	}
	if len(w.pollFDs) == 0 {
		return removed
	}
	for {
		_, err := unix.Poll(w.pollFDs, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return removed // try again next scan
		}
		break
	}
	for i, p := range w.pollFDs {
		if p.Revents != 0 {
			pid := w.pollPID[i]
			w.procs[pid].closePIDFD()
			removed = append(removed, pid)
			delete(w.procs, pid)
		}
	}
	return removed
}

func (w *Watcher) readStat(procfd, pid int) (statInfo, error) {
	n, err := readAt(procfd, strconv.Itoa(pid)+"/stat", w.statBuf)
	if err != nil {
		return statInfo{}, err
	}
	return parseStat(w.statBuf[:n])
}

// observe marks pid as present and, when it is new or its executable
// changed (exec, or a reused pid), matches it again. Selected and ignored
// processes cost nothing here, nor does any process when no Criteria looks at
// the executable; the others are checked for exec every exeRecheckEvery
// scans.
func (w *Watcher) observe(procfd, pid int) {
	st := w.procs[pid]
	if st != nil {
		st.gen = w.gen
		if st.selected || st.ignored || !w.recheckExe || (uint64(pid)+w.gen)%exeRecheckEvery != 0 {
			return
		}
	}
	link, err := readLinkAt(procfd, strconv.Itoa(pid)+"/exe", w.linkBuf)
	if err != nil || len(link) == 0 {
		// Kernel thread, zombie, gone, or not ours to read.
		if st == nil {
			st = &procState{}
			w.procs[pid] = st
		}
		*st = procState{gen: w.gen, ignored: true, pidfd: -1}
		return
	}
	h := maphash.Bytes(w.seed, link)
	if st != nil && st.exeHash == h {
		return
	}
	if st == nil {
		st = &procState{}
		w.procs[pid] = st
	}
	*st = procState{gen: w.gen, exeHash: h, pidfd: -1}
	w.evaluate(procfd, pid, st, strings.TrimSuffix(string(link), " (deleted)"))
}

// evaluate matches a new or exec'd process against the criteria that do not
// need its sockets.
func (w *Watcher) evaluate(procfd, pid int, st *procState, exe string) {
	for _, c := range w.criteria {
		if !c.matchesStatic(pid, exe) {
			continue
		}
		if len(c.Ports) == 0 {
			st.exe, st.match = exe, true
			w.matched = append(w.matched, pid)
			return
		}
		st.waiting = true
	}
	if !st.waiting {
		return
	}
	st.exe, st.fdScan = exe, true
	if link, err := readLinkAt(procfd, strconv.Itoa(pid)+"/ns/net", w.linkBuf); err == nil {
		st.netns, _ = nsInode(link)
	}
}

// matchPorts selects the waiting processes that hold a listening socket on
// a wanted port.
func (w *Watcher) matchPorts(procfd int) {
	w.listen, w.prevListen = w.prevListen, w.listen
	clear(w.listen)
	clear(w.nsRead)
	for pid, st := range w.procs {
		if !st.waiting || st.match || st.netns == 0 || w.nsRead[st.netns] {
			continue
		}
		// Try each waiting pid of a namespace until one read succeeds: the
		// first may have exited since it was listed.
		if w.readListen(procfd, pid, st.netns) {
			w.nsRead[st.netns] = true
		}
	}
	w.closeDiag(false)
	appeared := false
	for ino := range w.listen {
		if _, ok := w.prevListen[ino]; !ok {
			appeared = true
			break
		}
	}
	for pid, st := range w.procs {
		if !st.waiting || st.match || !(st.fdScan || appeared) {
			continue
		}
		st.fdScan = false
		if len(w.listen) > 0 && w.holdsWantedSocket(procfd, pid, st.exe) {
			st.match = true
			w.matched = append(w.matched, pid)
		}
	}
}

// readListen adds the wanted listening sockets of pid's network namespace,
// netns, to w.listen, through netlink or else from /proc. It reports whether
// both families were read.
func (w *Watcher) readListen(procfd, pid int, netns uint64) bool {
	return w.readListenDiag(procfd, pid, netns) || w.readListenProc(procfd, pid)
}

// readListenProc reads /proc/<pid>/net/tcp and tcp6 for readListen.
func (w *Watcher) readListenProc(procfd, pid int) bool {
	dir := strconv.Itoa(pid) + "/net/"
	for _, table := range []string{"tcp", "tcp6"} {
		fd, err := openAt(procfd, dir+table, unix.O_RDONLY)
		if err != nil {
			if table == "tcp6" && errors.Is(err, unix.ENOENT) && w.pidExists(procfd, pid) {
				continue // IPv6 disabled
			}
			return false
		}
		w.br.Reset(fdReader(fd))
		err = parseListen(w.br, w.wantPort, w.listen)
		unix.Close(fd)
		if err != nil {
			w.logger.Debug("read listening sockets", zap.String("table", dir+table), zap.Error(err))
			return false
		}
	}
	return true
}

func (w *Watcher) pidExists(procfd, pid int) bool {
	var s unix.Stat_t
	return unix.Fstatat(procfd, strconv.Itoa(pid), &s, 0) == nil
}

func (w *Watcher) wantPort(p uint16) bool {
	for _, r := range w.ports {
		if r.Contains(p) {
			return true
		}
	}
	return false
}

// holdsWantedSocket reads the fds of pid and reports whether one is a
// listening socket whose port a Criteria that matches pid wants.
func (w *Watcher) holdsWantedSocket(procfd, pid int, exe string) bool {
	fd, err := openAt(procfd, strconv.Itoa(pid)+"/fd", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	found := false
	// The dirent buffer is free here: the /proc listing is done.
	_ = readDirNames(fd, w.dirBuf, func(name []byte) {
		if found || len(name) == 0 || name[0] == '.' {
			return
		}
		link, err := readLinkAt(fd, string(name), w.linkBuf)
		if err != nil {
			return
		}
		ino, ok := socketInode(link)
		if !ok {
			return
		}
		port, ok := w.listen[ino]
		if !ok {
			return
		}
		for _, c := range w.criteria {
			if len(c.Ports) > 0 && c.matchesPort(port) && c.matchesStatic(pid, exe) {
				found = true
				return
			}
		}
	})
	return found
}

// describe reads what a selected process reports. It is best effort: a
// process that exits meanwhile is reported removed by the next scan.
func (w *Watcher) describe(pid int, exe string) Process {
	if !w.bootRead {
		w.bootID, w.bootRead = procres.BootID(w.procRoot), true
	}
	info := procres.Read(w.procRoot, pid, exe, w.bootID)
	return Process{
		PID: pid, ExePath: exe, ExeName: info.ExeName,
		ServiceName: info.ServiceName, Cmdline: info.CommandArgs, Resource: info,
	}
}

// fdReader reads a raw file descriptor.
type fdReader int

func (r fdReader) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(int(r), b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}
