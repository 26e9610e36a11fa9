package ebpftracingreceiver // import "github.com/ebpftracing/ebpftracingreceiver"

import (
	"go.opentelemetry.io/collector/receiver"

	ebpfreceiver "github.com/ebpftracing/ebpftracingreceiver/receiver"
)

// NewFactory returns the factory of the ebpf_tracing receiver.
func NewFactory() receiver.Factory {
	return ebpfreceiver.NewFactory()
}
