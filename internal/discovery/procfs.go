//go:build linux

package discovery

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"

	"golang.org/x/sys/unix"
)

// tcpListen is TCP_LISTEN as printed in the st column of /proc/net/tcp.
const tcpListen = "0A"

// statInfo holds the /proc/<pid>/stat fields the watcher uses.
type statInfo struct {
	state byte   // field 3
	start uint64 // field 22, clock ticks since boot
}

// parseStat parses /proc/<pid>/stat. comm may hold spaces and parentheses,
// so the fields after it are found from the last ')'.
func parseStat(b []byte) (statInfo, error) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return statInfo{}, errors.New("stat: no comm")
	}
	var s statInfo
	rest := b[closing+1:]
	// rest starts at field 3 (state); starttime is field 22.
	for field := 3; field <= 22; field++ {
		rest = bytes.TrimLeft(rest, " ")
		end := bytes.IndexAny(rest, " \n")
		if end < 0 {
			end = len(rest)
		}
		tok := rest[:end]
		rest = rest[end:]
		if len(tok) == 0 {
			return statInfo{}, fmt.Errorf("stat: %d fields, want 22", field-1)
		}
		var err error
		switch field {
		case 3:
			s.state = tok[0]
		case 22:
			s.start, err = strconv.ParseUint(string(tok), 10, 64)
		}
		if err != nil {
			return statInfo{}, fmt.Errorf("stat field %d: %w", field, err)
		}
	}
	return s, nil
}

// parseListen reads a /proc/net/tcp or tcp6 table and stores in out the
// inode and port of each LISTEN socket whose port want accepts.
//
// The kernel prints the listening hash first and the established hash after
// it (tcp_seq_start in net/ipv4/tcp_ipv4.c), and the listening hash only
// holds LISTEN sockets, so parsing stops at the first other state: on a busy
// host this keeps the established table, which can be megabytes, from being
// formatted at all.
func parseListen(r *bufio.Reader, want func(uint16) bool, out map[uint64]uint16) error {
	header := true
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return errors.New("line longer than the read buffer")
		}
		if len(line) > 0 && !header {
			listen, err := parseListenLine(line, want, out)
			if err != nil {
				return err
			}
			if !listen {
				return nil
			}
		}
		header = false
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// parseListenLine parses one table line:
//
//	sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
//	0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 12345 1 ...
//
// It reports false for a line that is not LISTEN.
func parseListenLine(line []byte, want func(uint16) bool, out map[uint64]uint16) (bool, error) {
	f := bytes.Fields(line)
	if len(f) == 0 {
		return true, nil
	}
	if len(f) < 10 {
		return false, fmt.Errorf("line %q: %d fields, want at least 10", line, len(f))
	}
	if string(f[3]) != tcpListen {
		return false, nil
	}
	local := f[1]
	colon := bytes.LastIndexByte(local, ':')
	if colon < 0 {
		return false, fmt.Errorf("local address %q: no port", local)
	}
	port, err := strconv.ParseUint(string(local[colon+1:]), 16, 16)
	if err != nil {
		return false, fmt.Errorf("local address %q: %w", local, err)
	}
	inode, err := strconv.ParseUint(string(f[9]), 10, 64)
	if err != nil {
		return false, fmt.Errorf("inode %q: %w", f[9], err)
	}
	if inode != 0 && want(uint16(port)) {
		out[inode] = uint16(port)
	}
	return true, nil
}

// socketInode parses a /proc/<pid>/fd link target of the form socket:[N].
func socketInode(link []byte) (uint64, bool) {
	const prefix = "socket:["
	if len(link) < len(prefix)+2 || string(link[:len(prefix)]) != prefix || link[len(link)-1] != ']' {
		return 0, false
	}
	n, err := strconv.ParseUint(string(link[len(prefix):len(link)-1]), 10, 64)
	return n, err == nil
}

// nsInode parses a /proc/<pid>/ns/net link target of the form net:[N].
func nsInode(link []byte) (uint64, bool) {
	const prefix = "net:["
	if len(link) < len(prefix)+2 || string(link[:len(prefix)]) != prefix || link[len(link)-1] != ']' {
		return 0, false
	}
	n, err := strconv.ParseUint(string(link[len(prefix):len(link)-1]), 10, 64)
	return n, err == nil
}

// parsePID parses a /proc entry name; other entries report false.
func parsePID(name []byte) (int, bool) {
	if len(name) == 0 || len(name) > 10 {
		return 0, false
	}
	n := 0
	for _, c := range name {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n > 0
}

// readDirNames calls fn with the name of each entry of the open directory
// fd, reusing buf for getdents64 so that a pass allocates nothing per entry.
func readDirNames(fd int, buf []byte, fn func(name []byte)) error {
	for {
		n, err := unix.Getdents(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		// struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				return errors.New("getdents: bad record length")
			}
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			fn(name)
			b = b[reclen:]
		}
	}
}

// readAt reads up to len(buf) bytes of the file at path relative to dirfd.
func readAt(dirfd int, path string, buf []byte) (int, error) {
	fd, err := openAt(dirfd, path, unix.O_RDONLY)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	total := 0
	for total < len(buf) {
		n, err := unix.Read(fd, buf[total:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			break
		}
		total += n
	}
	return total, nil
}

func openAt(dirfd int, path string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, path, flags|unix.O_CLOEXEC, 0)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}

// readLinkAt reads the link at path relative to dirfd into buf.
func readLinkAt(dirfd int, path string, buf []byte) ([]byte, error) {
	n, err := unix.Readlinkat(dirfd, path, buf)
	if err != nil {
		return nil, err
	}
	if n >= len(buf) {
		return nil, unix.ENAMETOOLONG
	}
	return buf[:n], nil
}

// gone reports an error that means the process no longer exists.
func gone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}
