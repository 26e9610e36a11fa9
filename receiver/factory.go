package ebpfreceiver // import "github.com/ebpftracing/ebpftracingreceiver/receiver"

import (
	"context"
	"fmt"
	"os"
	"slices"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/receiver"

	"github.com/ebpftracing/ebpftracingreceiver/internal/metadata"
)

// NewFactory returns the factory of the ebpf_tracing receiver.
func NewFactory() receiver.Factory {
	return receiver.NewFactory(
		metadata.Type,
		func() component.Config { return createDefaultConfig() },
		receiver.WithTraces(createTracesReceiver, metadata.TracesStability),
	)
}

// createTracesReceiver applies the BEYLA_* environment overrides to a copy
// of the configuration, validates the result and builds the receiver. It
// does no I/O: loading and attaching happen in Start.
func createTracesReceiver(_ context.Context, set receiver.Settings, cfg component.Config, next consumer.Traces) (receiver.Traces, error) {
	c := *cfg.(*Config)
	c.Discovery.Instrument = slices.Clone(c.Discovery.Instrument)

	overrides, err := applyEnv(&c, os.LookupEnv)
	if err != nil {
		return nil, fmt.Errorf("environment overrides: %w", err)
	}
	if err := c.Validate(); err != nil {
		if len(overrides) > 0 {
			return nil, fmt.Errorf("invalid configuration after environment overrides %v: %w", overrides, err)
		}
		return nil, err
	}
	return newTracesReceiver(set, &c, overrides, next)
}
