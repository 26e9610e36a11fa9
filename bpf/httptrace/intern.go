//go:build linux

package httptrace

import (
	"hash/maphash"
	"unsafe"
)

// internSlots is the number of strings a Decoder keeps: a power of two.
const internSlots = 2048

// Decoder decodes ring buffer records like Decode, but reuses the strings of
// recently seen methods, paths and Host values instead of allocating them
// for every record: a busy service sends the same few again and again. The
// cache is direct-mapped (one slot per hash value; a miss replaces the
// slot), so its memory stays bounded whatever the cardinality, and a miss
// costs one hash more than the allocation Decode makes anyway.
//
// The zero Decoder is ready to use. A Decoder is not safe for concurrent use.
type Decoder struct {
	seed  maphash.Seed
	slots *[internSlots]string // nil until the first string
}

// str returns the first n bytes (at most len(b)) of the C char array b as a
// string; a nil d allocates it.
func (d *Decoder) str(b []int8, n uint8) string {
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&b[0])), min(int(n), len(b)))
	if d == nil || len(raw) == 0 {
		return string(raw)
	}
	if d.slots == nil {
		d.seed, d.slots = maphash.MakeSeed(), new([internSlots]string)
	}
	slot := &d.slots[maphash.Bytes(d.seed, raw)&(internSlots-1)]
	// The comparison converts without allocating.
	if *slot != string(raw) {
		*slot = string(raw)
	}
	return *slot
}
