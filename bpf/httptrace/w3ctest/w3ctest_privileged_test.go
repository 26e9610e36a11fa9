//go:build linux && privileged

package w3ctest

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// parsed is what the kernel parser found in one request.
type parsed struct {
	headerEnd  uint64
	tpCount    int
	tpValid    bool
	traceID    string
	parentID   string
	flags      uint8
	overLimit  bool
	traceState string // as httptrace stores it: "" if none
	host       string
}

type parser struct {
	objs w3ctestObjects
}

func newParser(t *testing.T) *parser {
	t.Helper()
	require.NoError(t, rlimit.RemoveMemlock())
	p := &parser{}
	if err := loadW3ctestObjects(&p.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("load w3ctest: %+v", ve)
		}
		t.Fatalf("load w3ctest: %v", err)
	}
	t.Cleanup(func() { _ = p.objs.Close() })
	return p
}

// parse runs the kernel parser on req, the bytes of one read.
func (p *parser) parse(t *testing.T, req string) parsed {
	t.Helper()
	in := make([]byte, 8+len(req))
	binary.LittleEndian.PutUint32(in, uint32(len(req)))
	copy(in[8:], req)
	ret, err := p.objs.W3cParse.Run(&ebpf.RunOptions{Context: in})
	require.NoError(t, err)
	require.Zero(t, ret, "program refused the input")
	var r w3ctestW3cResult
	require.NoError(t, p.objs.Results.Lookup(uint32(0), &r))
	str := func(b []int8, n int) string {
		out := make([]byte, n)
		for i := range out {
			out[i] = byte(b[i])
		}
		return string(out)
	}
	return parsed{
		headerEnd:  r.HeaderEnd,
		tpCount:    int(r.TpCount),
		tpValid:    r.TpValid != 0,
		traceID:    hex.EncodeToString(r.TraceId[:]),
		parentID:   hex.EncodeToString(r.ParentId[:]),
		flags:      r.TraceFlags,
		overLimit:  r.OverLimit != 0,
		traceState: str(r.Ts[:], int(r.TsLen)),
		host:       str(r.Host[:], int(r.HostLen)),
	}
}

const (
	traceID  = "4bf92f3577b34da6a3ce929d0e0e4736"
	parentID = "00f067aa0ba902b7"
	tp       = "00-" + traceID + "-" + parentID + "-01"
)

// request builds a GET request with the given header lines.
func request(lines ...string) string {
	var b strings.Builder
	b.WriteString("GET /hello HTTP/1.1\r\nHost: example.com:8080\r\n")
	for _, l := range lines {
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// members returns n members "k<i>=v<i>" of the given value length.
func members(n, valueLen int) []string {
	out := make([]string, n)
	for i := range out {
		k := fmt.Sprintf("k%d=", i)
		out[i] = k + strings.Repeat("v", valueLen)
	}
	return out
}

func TestTraceparentRules(t *testing.T) {
	p := newParser(t)
	future := "cc-" + traceID + "-" + parentID + "-01"
	for _, tc := range []struct {
		name  string
		lines []string
		valid bool
		flags uint8
		count int
	}{
		{"valid", []string{"traceparent: " + tp}, true, 1, 1},
		{"not sampled flag kept", []string{"traceparent: 00-" + traceID + "-" + parentID + "-00"}, true, 0, 1},
		{"other flags kept", []string{"traceparent: 00-" + traceID + "-" + parentID + "-03"}, true, 3, 1},
		{"no whitespace", []string{"traceparent:" + tp}, true, 1, 1},
		{"name in upper case", []string{"TRACEPARENT: " + tp}, true, 1, 1},
		{"name in mixed case", []string{"TraceParent: " + tp}, true, 1, 1},
		{"spaces around the value", []string{"traceparent:    " + tp + "   "}, true, 1, 1},
		{"tabs around the value", []string{"traceparent:\t" + tp + "\t"}, true, 1, 1},
		{"upper-case hex", []string{"traceparent: 00-" + strings.ToUpper(traceID) + "-" + parentID + "-01"}, false, 0, 1},
		{"upper-case flags", []string{"traceparent: 00-" + traceID + "-" + parentID + "-0A"}, false, 0, 1},
		{"future version", []string{"traceparent: " + future}, true, 1, 1},
		{"future version, more fields", []string{"traceparent: " + future + "-what-the-future-holds"}, true, 1, 1},
		{"future version, no dash after 55", []string{"traceparent: " + future + "x"}, false, 0, 1},
		{"version 00 with more fields", []string{"traceparent: " + tp + "-extra"}, false, 0, 1},
		{"version 00 too long", []string{"traceparent: " + tp + "1"}, false, 0, 1},
		{"version 00 text after whitespace", []string{"traceparent: " + tp + " x"}, false, 0, 1},
		{"too short", []string{"traceparent: " + tp[:54]}, false, 0, 1},
		{"version ff", []string{"traceparent: ff" + tp[2:]}, false, 0, 1},
		{"version not hex", []string{"traceparent: 0g" + tp[2:]}, false, 0, 1},
		{"zero trace id", []string{"traceparent: 00-" + strings.Repeat("0", 32) + "-" + parentID + "-01"}, false, 0, 1},
		{"zero parent id", []string{"traceparent: 00-" + traceID + "-" + strings.Repeat("0", 16) + "-01"}, false, 0, 1},
		{"wrong separator", []string{"traceparent: 00_" + traceID + "-" + parentID + "-01"}, false, 0, 1},
		{"trace id one short", []string{"traceparent: 00-" + traceID[1:] + "-" + parentID + "-01"}, false, 0, 1},
		{"two traceparent headers", []string{"traceparent: " + tp, "traceparent: " + tp}, false, 0, 2},
		{"two, the second invalid", []string{"traceparent: " + tp, "traceparent: nope"}, false, 0, 2},
		{"no traceparent", []string{"x-other: 1"}, false, 0, 0},
		{"traceparentx is another header", []string{"traceparentx: " + tp}, false, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := p.parse(t, request(tc.lines...))
			assert.NotZero(t, got.headerEnd, "header block end found")
			assert.Equal(t, tc.count, got.tpCount, "traceparent headers")
			assert.Equal(t, tc.valid, got.tpValid && got.tpCount == 1, "valid")
			if tc.valid {
				assert.Equal(t, traceID, got.traceID)
				assert.Equal(t, parentID, got.parentID)
				assert.Equal(t, tc.flags, got.flags)
			}
		})
	}
}

func TestTracestateRules(t *testing.T) {
	p := newParser(t)
	long := func(n int, c string) string { return strings.Repeat(c, n) }
	thirtyTwo := members(32, 1)
	// 20 members of 2+1+30 bytes and 2 of 4+1+140 ("kxx=" + 140): > 512.
	withLong := append([]string{"big1=" + long(140, "b")}, members(20, 30)...)
	withLong = append(withLong[:5], append([]string{"big2=" + long(140, "c")}, withLong[5:]...)...)
	var wantLong []string
	for _, m := range withLong {
		if !strings.HasPrefix(m, "big") {
			wantLong = append(wantLong, m)
		}
	}
	// 20 × 33 = 660 bytes with commas: after dropping the long ones still
	// too long, so members go from the end until it fits.
	wantLong = fitPrefix(wantLong)
	for _, tc := range []struct {
		name  string
		lines []string
		want  string
	}{
		{"one member", []string{"tracestate: congo=t61rcWkgMzE"}, "congo=t61rcWkgMzE"},
		{"name in upper case", []string{"TraceState: a=1"}, "a=1"},
		{"two members", []string{"tracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"}, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"},
		{"headers combined in order", []string{"tracestate: a=1", "x-other: y", "tracestate: b=2,c=3"}, "a=1,b=2,c=3"},
		{"whitespace around members", []string{"tracestate:  a=1 ,\tb=2\t , c=3  "}, "a=1,b=2,c=3"},
		{"empty members skipped", []string{"tracestate: ,a=1,, ,b=2,"}, "a=1,b=2"},
		{"space inside a value", []string{"tracestate: a=x y"}, "a=x y"},
		{"value starting with a space", []string{"tracestate: a= y"}, "a= y"},
		{"value printable ASCII", []string{"tracestate: a=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~"}, "a=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~"},
		{"key characters", []string{"tracestate: a0_-*/=1"}, "a0_-*/=1"},
		{"multi-tenant key", []string{"tracestate: 1tenant@sys_-*/9=v"}, "1tenant@sys_-*/9=v"},
		{"key of 256", []string{"tracestate: a" + long(255, "b") + "=1"}, "a" + long(255, "b") + "=1"},
		{"key of 257", []string{"tracestate: a" + long(256, "b") + "=1"}, ""},
		{"tenant of 241", []string{"tracestate: " + long(241, "t") + "@s=1"}, long(241, "t") + "@s=1"},
		{"tenant of 242", []string{"tracestate: " + long(242, "t") + "@s=1"}, ""},
		{"system of 14", []string{"tracestate: t@s" + long(13, "y") + "=1"}, "t@s" + long(13, "y") + "=1"},
		{"system of 15", []string{"tracestate: t@s" + long(14, "y") + "=1"}, ""},
		{"system starting with a digit", []string{"tracestate: t@1s=1"}, ""},
		{"empty system", []string{"tracestate: t@=1"}, ""},
		{"two @", []string{"tracestate: t@s@x=1"}, ""},
		{"upper-case key", []string{"tracestate: Abc=1"}, ""},
		{"simple key starting with a digit", []string{"tracestate: 1abc=1"}, ""},
		{"key with a dot", []string{"tracestate: a.b=1"}, ""},
		{"key without value", []string{"tracestate: a"}, ""},
		{"empty value", []string{"tracestate: a="}, ""},
		{"only spaces as value", []string{"tracestate: a=   "}, ""},
		{"value with '='", []string{"tracestate: a=b=c"}, ""},
		{"value with a control character", []string{"tracestate: a=b\x01c"}, ""},
		{"value with DEL", []string{"tracestate: a=b\x7f"}, ""},
		{"value with a tab inside", []string{"tracestate: a=b\tc"}, ""},
		{"value of 256", []string{"tracestate: a=" + long(256, "v")}, "a=" + long(256, "v")},
		{"value of 257", []string{"tracestate: a=" + long(257, "v")}, ""},
		{"space before '='", []string{"tracestate: a =1"}, ""},
		{"one invalid member drops all", []string{"tracestate: a=1,B=2,c=3"}, ""},
		{"invalid in the second header drops all", []string{"tracestate: a=1", "tracestate: b"}, ""},
		{"32 members", []string{"tracestate: " + strings.Join(thirtyTwo, ",")}, strings.Join(thirtyTwo, ",")},
		{"33 members", []string{"tracestate: " + strings.Join(members(33, 1), ",")}, ""},
		{"32 members and empty ones", []string{"tracestate: ,," + strings.Join(thirtyTwo, ",,") + ",,"}, strings.Join(thirtyTwo, ",")},
		{"duplicate keys", []string{"tracestate: a=1,b=2,a=3"}, ""},
		{"duplicate keys across headers", []string{"tracestate: a=1", "tracestate: a=2"}, ""},
		{"duplicate multi-tenant keys", []string{"tracestate: t@s=1,t@s=2"}, ""},
		{"same tenant, other system", []string{"tracestate: t@s=1,t@x=2"}, "t@s=1,t@x=2"},
		{"over 512: cut from the end", []string{"tracestate: " + strings.Join(members(20, 30), ",")}, strings.Join(fitPrefix(members(20, 30)), ",")},
		{"over 512: long members dropped first", []string{"tracestate: " + strings.Join(withLong, ",")}, strings.Join(wantLong, ",")},
		{"over 512 in several headers", []string{"tracestate: " + strings.Join(members(10, 30), ","), "tracestate: " + strings.Join(members(20, 30)[10:], ",")}, strings.Join(fitPrefix(members(20, 30)), ",")},
		{"exactly 512", []string{"tracestate: a=" + long(254, "v") + ",b=" + long(253, "w")}, "a=" + long(254, "v") + ",b=" + long(253, "w")},
		{"long members kept when it fits", []string{"tracestate: big=" + long(200, "x") + ",a=1"}, "big=" + long(200, "x") + ",a=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := p.parse(t, request(append([]string{"traceparent: " + tp}, tc.lines...)...))
			require.True(t, got.tpValid, "traceparent valid")
			assert.Equal(t, tc.want, got.traceState)
			assert.LessOrEqual(t, len(got.traceState), 512)
		})
	}

	t.Run("dropped without traceparent", func(t *testing.T) {
		got := p.parse(t, request("tracestate: a=1"))
		assert.True(t, got.tpCount == 0)
		assert.Equal(t, "", got.traceState)
	})
	t.Run("dropped with an invalid traceparent", func(t *testing.T) {
		got := p.parse(t, request("traceparent: ff"+tp[2:], "tracestate: a=1"))
		assert.Equal(t, "", got.traceState)
	})
	t.Run("dropped with two traceparent headers", func(t *testing.T) {
		got := p.parse(t, request("traceparent: "+tp, "tracestate: a=1", "traceparent: "+tp))
		assert.Equal(t, "", got.traceState)
	})
	t.Run("traceparent after tracestate", func(t *testing.T) {
		got := p.parse(t, request("tracestate: a=1", "traceparent: "+tp))
		assert.Equal(t, "a=1", got.traceState)
	})
}

// fitPrefix keeps the members from the start while the list joined with
// ',' fits in 512 bytes.
func fitPrefix(ms []string) []string {
	n := -1
	for i, m := range ms {
		n += 1 + len(m)
		if n > 512 {
			return ms[:i]
		}
	}
	return ms
}

func TestLargeHeaderBlocks(t *testing.T) {
	p := newParser(t)
	filler := func(bytes int) []string {
		var out []string
		for i := 0; bytes > 0; i++ {
			l := fmt.Sprintf("x-fill-%d: %s", i, strings.Repeat("f", 90))
			out = append(out, l)
			bytes -= len(l) + 2
		}
		return out
	}
	t.Run("traceparent after 5 KiB", func(t *testing.T) {
		req := request(append(filler(5000), "traceparent: "+tp)...)
		got := p.parse(t, req)
		assert.Equal(t, uint64(len(req)), got.headerEnd)
		assert.True(t, got.tpValid)
		assert.Equal(t, traceID, got.traceID)
		assert.False(t, got.overLimit)
	})
	// A traceparent at every offset around the 1 KiB chunk boundaries.
	for shift := 0; shift < 200; shift += 7 {
		req := request(append(filler(900), "x-pad: "+strings.Repeat("p", shift), "traceparent: "+tp, "tracestate: a=1,b="+strings.Repeat("s", 200))...)
		got := p.parse(t, req)
		if !assert.True(t, got.tpValid, "shift %d", shift) {
			continue
		}
		assert.Equal(t, parentID, got.parentID, "shift %d", shift)
		assert.Equal(t, "a=1,b="+strings.Repeat("s", 200), got.traceState, "shift %d", shift)
		assert.Equal(t, uint64(len(req)), got.headerEnd, "shift %d", shift)
	}
	t.Run("tracestate line longer than a chunk", func(t *testing.T) {
		ms := members(30, 60) // about 1.9 KiB on one line
		req := request("traceparent: "+tp, "tracestate: "+strings.Join(ms, " , "))
		got := p.parse(t, req)
		assert.Equal(t, strings.Join(fitPrefix(ms), ","), got.traceState)
	})
	t.Run("traceparent past 16 KiB", func(t *testing.T) {
		req := request(append(filler(17000), "traceparent: "+tp)...)
		got := p.parse(t, req)
		assert.True(t, got.overLimit, "limit reported")
		assert.Zero(t, got.headerEnd)
		assert.Zero(t, got.tpCount, "not found past the limit")
	})
	t.Run("traceparent before 16 KiB in a larger block", func(t *testing.T) {
		req := request(append(append(filler(15000), "traceparent: "+tp), filler(3000)...)...)
		got := p.parse(t, req)
		assert.True(t, got.overLimit)
		assert.True(t, got.tpValid, "found before the limit")
		assert.Equal(t, traceID, got.traceID)
	})
	t.Run("Host and the block end", func(t *testing.T) {
		req := request("traceparent: " + tp)
		got := p.parse(t, req+"BODY")
		assert.Equal(t, "example.com:8080", got.host)
		assert.Equal(t, uint64(len(req)), got.headerEnd)
	})
}

// BenchmarkScan reports the kernel time of one header block scan
// (BPF_PROG_TEST_RUN, repeated in the kernel): a Go client's request, a
// curl request with a traceparent, and 30 extra headers.
func BenchmarkScan(b *testing.B) {
	cases := map[string]string{
		"go-client":   request("Host: 127.0.0.1:8080", "User-Agent: Go-http-client/1.1", "Accept-Encoding: gzip"),
		"traceparent": request("Host: 127.0.0.1:8080", "User-Agent: curl/8.5.0", "Accept: */*", "traceparent: "+tp),
	}
	var many []string
	for i := range 30 {
		many = append(many, fmt.Sprintf("X-Extra-%02d: %s", i, strings.Repeat("v", 60)))
	}
	cases["30-headers"] = request(many...)
	for name, req := range cases {
		b.Run(name, func(b *testing.B) {
			require.NoError(b, rlimit.RemoveMemlock())
			var objs w3ctestObjects
			require.NoError(b, loadW3ctestObjects(&objs, nil))
			defer objs.Close()
			in := make([]byte, 8+len(req))
			binary.LittleEndian.PutUint32(in, uint32(len(req)))
			copy(in[8:], req)
			st, err := ebpf.EnableStats(0) // BPF_STATS_RUN_TIME
			require.NoError(b, err)
			defer st.Close()
			b.ResetTimer()
			for range b.N {
				if _, err := objs.W3cParse.Run(&ebpf.RunOptions{Context: in}); err != nil {
					b.Fatal(err)
				}
			}
			stats, err := objs.W3cParse.Stats()
			require.NoError(b, err)
			b.ReportMetric(float64(stats.Runtime.Nanoseconds())/float64(stats.RunCount), "bpf-ns/scan")
		})
	}
}
