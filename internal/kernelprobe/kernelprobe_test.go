//go:build linux

package kernelprobe

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCgroupV2Mount(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"hybrid": "25 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n" +
			"26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n" +
			"27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
		"unified": "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
		"none":    "22 1 0:21 / /proc rw - proc proc rw\n",
	}
	want := map[string]string{"hybrid": "/sys/fs/cgroup/unified", "unified": "/sys/fs/cgroup", "none": ""}
	for name, content := range cases {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := cgroupV2Mount(p); got != want[name] {
			t.Errorf("%s: got %q, want %q", name, got, want[name])
		}
	}
}

func TestLockdown(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "lockdown")
	if got := lockdown(p); got != "none" {
		t.Errorf("missing file: got %q, want none", got)
	}
	if err := os.WriteFile(p, []byte("none [integrity] confidentiality\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := lockdown(p); got != "integrity" {
		t.Errorf("got %q, want integrity", got)
	}
}
