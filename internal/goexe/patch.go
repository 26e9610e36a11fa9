package goexe

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"os"
)

// SetGoVersion rewrites, in the executable at path, the Go version its build
// info records (e.g. "go1.26.8") to version, of the same length: a program
// that looks built by another release, for tests of releases this machine
// cannot build. Only the .go.buildinfo section changes; the program still
// runs.
func SetGoVersion(path, version string) error {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read Go build info: %w", err)
	}
	if len(version) != len(bi.GoVersion) {
		return fmt.Errorf("version %q: want %d bytes like %q", version, len(bi.GoVersion), bi.GoVersion)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("parse executable: %w", err)
	}
	sec := f.Section(".go.buildinfo")
	f.Close()
	if sec == nil {
		return ErrNotGo
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if sec.Offset+sec.Size > uint64(len(b)) {
		return fmt.Errorf(".go.buildinfo outside the file")
	}
	data := b[sec.Offset : sec.Offset+sec.Size]
	i := bytes.Index(data, []byte(bi.GoVersion))
	if i < 0 {
		return fmt.Errorf("%s not found in .go.buildinfo", bi.GoVersion)
	}
	copy(data[i:], version)
	return os.WriteFile(path, b, 0o755)
}
