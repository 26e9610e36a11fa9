package httptrace

// SamplerRoot is how the kernel decides a trace context without a parent
// (enum sampler_root in bpf/include/sampler.h).
type SamplerRoot uint8

// Root samplers.
const (
	RootAlwaysOn  SamplerRoot = 0
	RootAlwaysOff SamplerRoot = 1
	RootRatio     SamplerRoot = 2 // traceidratio
)

// Sampler is the head sampler decided in the kernel. The zero value is
// parentbased_always_on, the OpenTelemetry SDK default.
type Sampler struct {
	// Root decides the contexts without a valid incoming parent.
	Root SamplerRoot
	// IgnoreParent decides contexts with a parent by Root too, on their
	// trace id, instead of keeping the parent's sampled flag: the
	// non-parentbased samplers.
	IgnoreParent bool
	// Ratio is the sampling ratio of RootRatio, in [0, 1].
	Ratio float64
}

// RatioThreshold is the traceidratio threshold for ratio, as the
// OpenTelemetry specification and SDKs compute it: a trace id is sampled
// when its bytes 8..15, read as a big-endian uint64 and shifted right by
// one, are below ratio * 2^63. Ratios outside [0, 1] are clamped, NaN
// samples nothing.
func RatioThreshold(ratio float64) uint64 {
	switch {
	case ratio >= 1:
		return 1 << 63
	case !(ratio > 0):
		return 0
	}
	return uint64(ratio * (1 << 63))
}

// RatioSampled is the kernel's traceidratio decision for traceID under
// threshold, in Go: the reference the tests hold the kernel to.
func RatioSampled(traceID [16]byte, threshold uint64) bool {
	var x uint64
	for _, b := range traceID[8:] {
		x = x<<8 | uint64(b)
	}
	return x>>1 < threshold
}
