//go:build linux && privileged

package ebpfreceiver

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ebpftracing/ebpftracingreceiver/internal/kernelprobe"
	"github.com/ebpftracing/ebpftracingreceiver/internal/metadata"
)

// TestStartGate: Start succeeds whatever the write gate decides (the real
// one on this kernel, injected refusals, an injected "on"), reports the
// decision in the start log line and warns once exactly when it is off.
func TestStartGate(t *testing.T) {
	refused := func() error {
		return errors.New("verifier: program of this type cannot use helper bpf_probe_write_user#36")
	}
	cases := []struct {
		name   string
		inputs func(t *testing.T) kernelprobe.UserWriteInputs
		want   string // prefix of the start log's go_library_writes
	}{
		{"real", nil, ""},
		{"injected on", func(t *testing.T) kernelprobe.UserWriteInputs {
			return gateInputs(t, "000001ffffffffff", "[none] integrity confidentiality", func() error { return nil })
		}, "on"},
		{"injected refused", func(t *testing.T) kernelprobe.UserWriteInputs {
			return gateInputs(t, "000001ffffffffff", "[none] integrity confidentiality", refused)
		}, "off: bpf_probe_write_user refused"},
		{"injected no CAP_SYS_ADMIN", func(t *testing.T) kernelprobe.UserWriteInputs {
			return gateInputs(t, "000001ffffdfffff", "none [integrity] confidentiality", refused)
		}, "off: CAP_SYS_ADMIN missing; kernel lockdown integrity"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := createDefaultConfig()
			cfg.Discovery.Instrument = []Selector{{PID: 1}}
			cfg.EBPF.ContextPropagation = PropagationAll
			core, logs := observer.New(zapcore.InfoLevel)
			set := receivertest.NewNopSettings(metadata.Type)
			set.Logger = zap.New(core)
			rcv, err := NewFactory().CreateTraces(context.Background(), set, cfg, new(consumertest.TracesSink))
			if err != nil {
				t.Fatal(err)
			}
			tr := rcv.(*tracesReceiver)
			if c.inputs != nil {
				tr.userWrites = c.inputs(t)
			}
			if err := rcv.Start(context.Background(), componenttest.NewNopHost()); err != nil {
				t.Fatalf("Start failed because of the gate? %v", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			defer func() { _ = rcv.Shutdown(ctx) }()
			started := logs.FilterMessage("ebpf_tracing started").All()
			if len(started) != 1 {
				t.Fatalf("start lines: %v", logs.All())
			}
			got, _ := started[0].ContextMap()["go_library_writes"].(string)
			warns := logs.FilterMessageSnippet("Go library-level header writes off").All()
			t.Logf("go_library_writes=%q, %d warning(s)", got, len(warns))
			if c.want != "" && !strings.HasPrefix(got, c.want) {
				t.Errorf("go_library_writes %q, want %q…", got, c.want)
			}
			if wantWarn := strings.HasPrefix(got, "off"); (len(warns) == 1) != wantWarn || len(warns) > 1 {
				t.Errorf("%d warnings for go_library_writes %q", len(warns), got)
			}
			if c.inputs == nil {
				// The real gate: off under lockdown, with the verifier's words.
				if b, err := os.ReadFile(kernelprobe.LockdownPath); err == nil && !strings.Contains(string(b), "[none]") {
					if !strings.HasPrefix(got, "off: kernel lockdown") || !strings.Contains(got, "bpf_probe_write_user refused: verifier:") {
						t.Errorf("locked down kernel (%s): go_library_writes %q", strings.TrimSpace(string(b)), got)
					}
				}
			}
		})
	}
}
