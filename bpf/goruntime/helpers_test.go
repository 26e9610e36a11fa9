//go:build linux

package goruntime

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var builds sync.Map // ldflags -> func() (string, error)

// buildGochain builds testdata/gochain once per ldflags.
func buildGochain(t testing.TB, ldflags string) string {
	t.Helper()
	f, _ := builds.LoadOrStore(ldflags, sync.OnceValues(func() (string, error) {
		dir, err := os.MkdirTemp("", "gochain")
		if err != nil {
			return "", err
		}
		bin := filepath.Join(dir, "gochain")
		out, err := exec.Command("go", "build", "-ldflags="+ldflags, "-o", bin, "./testdata/gochain").CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("build gochain: %v\n%s", err, out)
		}
		return bin, nil
	}))
	bin, err := f.(func() (string, error))()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}
