//go:build linux

package httptrace

import "testing"

func TestWakeupBytes(t *testing.T) {
	rec := uint64(EventSize + 8)
	for _, tc := range []struct {
		records, ring int
		want          uint64
	}{
		{0, 4 << 20, 0},
		{64, 4 << 20, 64 * rec},
		{512, 4 << 20, 512 * rec},
		// A quarter of a small ring at most, so it is drained before it fills.
		{512, 64 << 10, 16 << 10},
		{1 << 20, 4 << 20, 1 << 20},
	} {
		if got := wakeupBytes(tc.records, tc.ring); got != tc.want {
			t.Errorf("wakeupBytes(%d, %d) = %d, want %d", tc.records, tc.ring, got, tc.want)
		}
	}
}
