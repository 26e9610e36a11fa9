package ebpfreceiver

import (
	"context"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/ebpftracing/ebpftracingreceiver/internal/metadata"
)

func TestFactory(t *testing.T) {
	f := NewFactory()
	assert.Equal(t, metadata.Type, f.Type())
	assert.Equal(t, component.StabilityLevelAlpha, f.TracesStability())
	require.NoError(t, componenttest.CheckConfigStruct(f.CreateDefaultConfig()))
}

func validConfig() *Config {
	cfg := createDefaultConfig()
	cfg.Discovery.Instrument = []Selector{{OpenPorts: "8080"}}
	return cfg
}

func TestCreateTracesReceiver(t *testing.T) {
	set := receivertest.NewNopSettings(metadata.Type)
	r, err := NewFactory().CreateTraces(context.Background(), set, validConfig(), consumertest.NewNop())
	if runtime.GOOS != "linux" {
		require.EqualError(t, err, "ebpf_tracing is only supported on linux")
		return
	}
	require.NoError(t, err)
	require.NotNil(t, r)
	// Shutdown without Start must be safe.
	require.NoError(t, r.Shutdown(context.Background()))
}

func TestCreateTracesReceiverInvalid(t *testing.T) {
	set := receivertest.NewNopSettings(metadata.Type)
	_, err := NewFactory().CreateTraces(context.Background(), set, createDefaultConfig(), consumertest.NewNop())
	require.EqualError(t, err, "discovery.instrument: at least one selector is needed (open_ports, exe_path or pid)")
}

func TestCreateTracesReceiverBadEnv(t *testing.T) {
	t.Setenv("BEYLA_BPF_BATCH_LENGTH", "many")
	set := receivertest.NewNopSettings(metadata.Type)
	_, err := NewFactory().CreateTraces(context.Background(), set, validConfig(), consumertest.NewNop())
	require.EqualError(t, err, `environment overrides: BEYLA_BPF_BATCH_LENGTH: invalid integer "many"`)
}

func TestCreateTracesReceiverEnvDoesNotMutateConfig(t *testing.T) {
	t.Setenv("BEYLA_BPF_BATCH_LENGTH", "5")
	cfg := validConfig()
	set := receivertest.NewNopSettings(metadata.Type)
	r, err := NewFactory().CreateTraces(context.Background(), set, cfg, consumertest.NewNop())
	if runtime.GOOS == "linux" {
		require.NoError(t, err)
		require.NoError(t, r.Shutdown(context.Background()))
	}
	assert.Equal(t, defaultBatchLength, cfg.EBPF.BatchLength, "the factory must work on a copy")
}
