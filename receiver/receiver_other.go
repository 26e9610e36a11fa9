//go:build !linux

package ebpfreceiver // import "github.com/ebpftracing/ebpftracingreceiver/receiver"

import (
	"errors"

	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/receiver"
)

// newTracesReceiver fails everywhere but linux: eBPF tracing needs the
// linux kernel.
func newTracesReceiver(receiver.Settings, *Config, []string, consumer.Traces) (receiver.Traces, error) {
	return nil, errors.New("ebpf_tracing is only supported on linux")
}
