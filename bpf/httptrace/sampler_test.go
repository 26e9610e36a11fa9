package httptrace

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRatioThreshold(t *testing.T) {
	for _, tt := range []struct {
		ratio float64
		want  uint64
	}{
		{1, 1 << 63},
		{1.5, 1 << 63},
		{0, 0},
		{-1, 0},
		{math.NaN(), 0},
		{0.5, 1 << 62},
		{0.25, 1 << 61},
		// The Go SDK's traceIDRatioBased: uint64(fraction * (1 << 63)).
		{0.1, 922337203685477632}, // float64(0.1) * 2^63, exact
		{0.75, 3 << 61},
	} {
		assert.Equal(t, tt.want, RatioThreshold(tt.ratio), "ratio %v", tt.ratio)
	}
}

func TestRatioSampled(t *testing.T) {
	id := func(low uint64) [16]byte {
		var b [16]byte
		b[0] = 0xff // the high half does not count
		binary.BigEndian.PutUint64(b[8:], low)
		return b
	}
	half := RatioThreshold(0.5) // 1 << 62: sampled when low>>1 < 1<<62
	assert.True(t, RatioSampled(id(0), half))
	assert.True(t, RatioSampled(id(1<<63-1), half))
	assert.False(t, RatioSampled(id(1<<63), half))
	assert.False(t, RatioSampled(id(math.MaxUint64), half))
	assert.True(t, RatioSampled(id(math.MaxUint64), RatioThreshold(1)), "ratio 1 samples every id")
	assert.False(t, RatioSampled(id(0), RatioThreshold(0)), "ratio 0 samples none")

	// Over random ids the share sampled is the ratio.
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 200000
	for _, ratio := range []float64{0.01, 0.25, 0.9} {
		th := RatioThreshold(ratio)
		k := 0
		for range n {
			if RatioSampled(id(rng.Uint64()), th) {
				k++
			}
		}
		assert.InDelta(t, ratio, float64(k)/n, 0.005, "ratio %v", ratio)
	}
}
