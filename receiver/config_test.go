package ebpfreceiver

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/confmaptest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/ebpftracing/ebpftracingreceiver/internal/metadata"
)

func TestLoadConfig(t *testing.T) {
	cm, err := confmaptest.LoadConf(filepath.Join("..", "testdata", "config.yaml"))
	require.NoError(t, err)

	defaults := func(instrument ...Selector) *Config {
		c := createDefaultConfig()
		c.Discovery.Instrument = instrument
		return c
	}

	tests := []struct {
		name    string
		want    *Config  // checked when wantErr is empty
		wantErr []string // every message must appear in the joined error
	}{
		{
			name: "",
			want: defaults(Selector{OpenPorts: "8080"}),
		},
		{
			name: "all_fields",
			want: &Config{
				Discovery: DiscoveryConfig{
					Instrument: []Selector{
						{OpenPorts: "80,8080-8089"},
						{ExePath: "*/python3*"},
						{PID: 4242},
						{OpenPorts: "443", ExePath: "/usr/sbin/nginx"},
					},
					PollInterval: 2 * time.Second,
				},
				EBPF: EBPFConfig{
					ContextPropagation:     "headers,tcp",
					OverrideBPFLoopEnabled: true,
					TrafficControlBackend:  TCBackendTCX,
					PacketCarrier:          CarrierIPOption,
					IOHook:                 IOHookSysExit,
					GoLibraryWrites:        GoLibraryWritesOff,
					RingBufferSize:         16 << 20,
					WakeupLen:              0,
					BatchTimeout:           time.Second,
					BatchLength:            50,
					TrackRequestHeaders:    false,
				},
				Sampler: SamplerConfig{Name: SamplerParentBasedTraceIDRatio, Arg: "0.25"},
				Routes:  RoutesConfig{Unmatched: RoutesHeuristic, WildcardChar: "*"},
			},
		},
		{
			name: "sampler_always_off",
			want: func() *Config {
				c := defaults(Selector{PID: 1})
				c.Sampler.Name = SamplerAlwaysOff
				return c
			}(),
		},
		{
			name: "bad_sampler_name",
			wantErr: []string{`sampler: unknown sampler "jaeger_remote"; want always_on, always_off, traceidratio, ` +
				`parentbased_always_on, parentbased_always_off or parentbased_traceidratio`},
		},
		{
			name:    "bad_sampler_ratio",
			wantErr: []string{`sampler: arg "1.5": traceidratio wants a ratio from 0 to 1, e.g. 0.25`},
		},
		{
			name:    "sampler_ratio_not_a_number",
			wantErr: []string{`sampler: arg "quarter": parentbased_traceidratio wants a ratio from 0 to 1, e.g. 0.25`},
		},
		{
			name:    "sampler_arg_without_name",
			wantErr: []string{`sampler.arg: set without sampler.name`},
		},
		{
			name:    "sampler_arg_not_taken",
			wantErr: []string{`sampler: arg "0.5": always_on takes no argument`},
		},
		{
			name:    "no_instrument",
			wantErr: []string{"discovery.instrument: at least one selector is needed (open_ports, exe_path or pid)"},
		},
		{
			name:    "empty_selector",
			wantErr: []string{"discovery.instrument[1]: set at least one of open_ports, exe_path or pid"},
		},
		{
			name:    "bad_ports",
			wantErr: []string{`discovery.instrument[2].open_ports: range "9000-80" starts after it ends`},
		},
		{
			name: "bad_port_number",
			wantErr: []string{
				`discovery.instrument[0].open_ports: invalid port "http"; want a number from 1 to 65535`,
				`discovery.instrument[1].open_ports: invalid port "70000"; want a number from 1 to 65535`,
				`discovery.instrument[2].open_ports: empty entry in "80,,81"`,
			},
		},
		{
			name:    "bad_glob",
			wantErr: []string{`discovery.instrument[0].exe_path: invalid glob "/usr/bin/[python": syntax error in pattern`},
		},
		{
			name:    "negative_pid",
			wantErr: []string{"discovery.instrument[0].pid: must not be negative, got -5"},
		},
		{
			name:    "bad_propagation",
			wantErr: []string{`ebpf.context_propagation: unknown value "al"; want all, headers, tcp or disabled`},
		},
		{
			name:    "disabled_combined",
			wantErr: []string{`ebpf.context_propagation: "disabled" cannot be combined with other values in "disabled,tcp"`},
		},
		{
			name: "routes",
			want: func() *Config {
				c := defaults(Selector{PID: 1})
				c.Routes = RoutesConfig{Patterns: []string{"/users/{id}", "/users/{id}/orders/:order"}, Unmatched: RoutesUnset, WildcardChar: "_",
					IgnoredPatterns: []string{"/health", "/debug/**"}}
				return c
			}(),
		},
		{
			name: "bad_routes",
			wantErr: []string{
				`routes.patterns[0]: "users/{id}" does not start with /`,
				`routes.patterns[1]: "/a/{b": segment "{b": want {name}`,
				`routes.unmatched: unknown value "sometimes"; want heuristic, path, wildcard or unset`,
				`routes.wildcard_char: "**" is not one printable ASCII character other than / and ?`,
				`routes.ignored_patterns[0]: "/a/**/b": ** must be the last segment`,
			},
		},
		{
			name:    "bad_io_hook",
			wantErr: []string{`ebpf.io_hook: unknown value "kprobe"; want auto, socket or sys_exit`},
		},
		{
			name:    "bad_go_library_writes",
			wantErr: []string{`ebpf.go_library_writes: unknown value "on"; want auto or off`},
		},
		{
			name:    "bad_tc_backend",
			wantErr: []string{`ebpf.traffic_control_backend: unknown value "xdp"; want auto, tc or tcx`},
		},
		{
			name:    "bad_packet_carrier",
			wantErr: []string{`ebpf.packet_carrier: unknown value "tcp"; want tcp_option or ip_option`},
		},
		{
			name:    "bad_ring_buffer_size",
			wantErr: []string{"ebpf.ring_buffer_size: must be a power of two from 4096 to 1073741824 bytes, got 5000"},
		},
		{
			name:    "small_ring_buffer",
			wantErr: []string{"ebpf.ring_buffer_size: must be a power of two from 4096 to 1073741824 bytes, got 2048"},
		},
		{
			name:    "huge_ring_buffer",
			wantErr: []string{"ebpf.ring_buffer_size: must be a power of two from 4096 to 1073741824 bytes, got 2147483648"},
		},
		{
			name:    "poll_too_fast",
			wantErr: []string{"discovery.poll_interval: must be at least 50ms, got 10ms"},
		},
		{
			name: "negative_values",
			wantErr: []string{
				"ebpf.wakeup_len: must not be negative, got -1",
				"ebpf.batch_timeout: must be positive, got -1s",
				"ebpf.batch_length: must be at least 1, got -3",
			},
		},
		{
			name: "zero_batch",
			wantErr: []string{
				"ebpf.batch_timeout: must be positive, got 0s",
				"ebpf.batch_length: must be at least 1, got 0",
			},
		},
		{
			name: "many_problems",
			wantErr: []string{
				"discovery.instrument: at least one selector is needed (open_ports, exe_path or pid)",
				"discovery.poll_interval: must be at least 50ms, got 1ms",
				`ebpf.context_propagation: unknown value "al"; want all, headers, tcp or disabled`,
				`ebpf.traffic_control_backend: unknown value "bpf"; want auto, tc or tcx`,
			},
		},
	}

	for _, tt := range tests {
		id := component.NewIDWithName(metadata.Type, tt.name)
		t.Run(id.String(), func(t *testing.T) {
			cfg := NewFactory().CreateDefaultConfig()
			sub, err := cm.Sub(id.String())
			require.NoError(t, err)
			require.NoError(t, sub.Unmarshal(cfg))

			err = confmap.Validate(cfg)
			if len(tt.wantErr) == 0 {
				require.NoError(t, err)
				assert.Equal(t, tt.want, cfg)
				return
			}
			require.Error(t, err)
			for _, msg := range tt.wantErr {
				assert.Contains(t, err.Error(), msg)
			}
			// One line per problem: nothing reported twice.
			assert.Len(t, splitLines(err.Error()), len(tt.wantErr))
		})
	}
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := range len(s) {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func TestLoadConfigUnknownField(t *testing.T) {
	cm := confmap.NewFromStringMap(map[string]any{
		"ebpf": map[string]any{"ring_buffer": 4096},
	})
	cfg := createDefaultConfig()
	err := cm.Unmarshal(cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ring_buffer")
}

func TestCreateDefaultConfig(t *testing.T) {
	cfg := createDefaultConfig()
	assert.Equal(t, 500*time.Millisecond, cfg.Discovery.PollInterval)
	assert.Equal(t, PropagationDisabled, cfg.EBPF.ContextPropagation)
	assert.False(t, cfg.EBPF.OverrideBPFLoopEnabled)
	assert.Equal(t, TCBackendAuto, cfg.EBPF.TrafficControlBackend)
	assert.Equal(t, IOHookAuto, cfg.EBPF.IOHook)
	assert.Equal(t, 4194304, cfg.EBPF.RingBufferSize)
	assert.Equal(t, 512, cfg.EBPF.WakeupLen)
	assert.Equal(t, 200*time.Millisecond, cfg.EBPF.BatchTimeout)
	assert.Equal(t, 1000, cfg.EBPF.BatchLength)
	assert.True(t, cfg.EBPF.TrackRequestHeaders)

	// The defaults are valid once a selector is given.
	cfg.Discovery.Instrument = []Selector{{PID: 1}}
	require.NoError(t, cfg.Validate())
}

func TestPropagation(t *testing.T) {
	tests := []struct {
		in      string
		want    Propagation
		wantErr string
	}{
		{in: "", want: Propagation{}},
		{in: "disabled", want: Propagation{}},
		{in: "all", want: Propagation{Headers: true, TCP: true}},
		{in: "headers", want: Propagation{Headers: true}},
		{in: "tcp", want: Propagation{TCP: true}},
		{in: "headers,tcp", want: Propagation{Headers: true, TCP: true}},
		{in: " tcp , headers ", want: Propagation{Headers: true, TCP: true}},
		{in: "Headers", want: Propagation{Headers: true}},
		{in: "all,headers", want: Propagation{Headers: true, TCP: true}},
		{in: "al", wantErr: `ebpf.context_propagation: unknown value "al"; want all, headers, tcp or disabled`},
		{in: "headers,", wantErr: `ebpf.context_propagation: unknown value ""; want all, headers, tcp or disabled`},
		{in: "disabled,all", wantErr: `ebpf.context_propagation: "disabled" cannot be combined with other values in "disabled,all"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := EBPFConfig{ContextPropagation: tt.in}.Propagation()
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestPortRanges(t *testing.T) {
	tests := []struct {
		in      string
		want    []PortRange
		wantErr string
	}{
		{in: "", want: nil},
		{in: "80", want: []PortRange{{80, 80}}},
		{in: "80,8080-8089", want: []PortRange{{80, 80}, {8080, 8089}}},
		{in: " 443 , 1-65535 ", want: []PortRange{{443, 443}, {1, 65535}}},
		{in: "8000-8000", want: []PortRange{{8000, 8000}}},
		{in: "0", wantErr: `invalid port "0"; want a number from 1 to 65535`},
		{in: "65536", wantErr: `invalid port "65536"; want a number from 1 to 65535`},
		{in: "-80", wantErr: `invalid port ""; want a number from 1 to 65535`},
		{in: "80-", wantErr: `invalid port ""; want a number from 1 to 65535`},
		{in: "1-2-3", wantErr: `invalid port "2-3"; want a number from 1 to 65535`},
		{in: "90-80", wantErr: `range "90-80" starts after it ends`},
		{in: "80,", wantErr: `empty entry in "80,"`},
		{in: "http", wantErr: `invalid port "http"; want a number from 1 to 65535`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Selector{OpenPorts: tt.in}.PortRanges()
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}

	r := PortRange{Lo: 8080, Hi: 8089}
	assert.True(t, r.Contains(8080))
	assert.True(t, r.Contains(8089))
	assert.False(t, r.Contains(8090))
	assert.False(t, r.Contains(80))
}

func mapLookup(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}
}

func TestApplyEnvWins(t *testing.T) {
	cfg := &Config{
		Discovery: DiscoveryConfig{Instrument: []Selector{{PID: 1}}, PollInterval: time.Second},
		EBPF: EBPFConfig{
			ContextPropagation:     "headers",
			OverrideBPFLoopEnabled: false,
			TrafficControlBackend:  TCBackendTC,
			PacketCarrier:          CarrierTCPOption,
			IOHook:                 IOHookAuto,
			GoLibraryWrites:        GoLibraryWritesAuto,
			RingBufferSize:         1 << 20,
			WakeupLen:              10,
			BatchTimeout:           time.Second,
			BatchLength:            10,
			TrackRequestHeaders:    false,
		},
	}
	overrides, err := applyEnv(cfg, mapLookup(map[string]string{
		"BEYLA_BPF_CONTEXT_PROPAGATION":   "all",
		"BEYLA_OVERRIDE_BPF_LOOP_ENABLED": "true",
		"BEYLA_BPF_TC_BACKEND":            "tcx",
		"BEYLA_BPF_WAKEUP_LEN":            "0",
		"BEYLA_BPF_BATCH_TIMEOUT":         "50ms",
		"BEYLA_BPF_BATCH_LENGTH":          "7",
		"BEYLA_BPF_TRACK_REQUEST_HEADERS": "1",
		"OTEL_EBPF_BPF_BATCH_LENGTH":      "99", // not read
	}))
	require.NoError(t, err)
	assert.Equal(t, []string{
		"BEYLA_BPF_CONTEXT_PROPAGATION",
		"BEYLA_OVERRIDE_BPF_LOOP_ENABLED",
		"BEYLA_BPF_TC_BACKEND",
		"BEYLA_BPF_WAKEUP_LEN",
		"BEYLA_BPF_BATCH_TIMEOUT",
		"BEYLA_BPF_BATCH_LENGTH",
		"BEYLA_BPF_TRACK_REQUEST_HEADERS",
	}, overrides)
	assert.Equal(t, EBPFConfig{
		ContextPropagation:     "all",
		OverrideBPFLoopEnabled: true,
		TrafficControlBackend:  TCBackendTCX,
		PacketCarrier:          CarrierTCPOption,
		IOHook:                 IOHookAuto,
		GoLibraryWrites:        GoLibraryWritesAuto,
		RingBufferSize:         1 << 20, // no variable
		WakeupLen:              0,
		BatchTimeout:           50 * time.Millisecond,
		BatchLength:            7,
		TrackRequestHeaders:    true,
	}, cfg.EBPF)
	assert.Equal(t, time.Second, cfg.Discovery.PollInterval)
	require.NoError(t, cfg.Validate())
}

func TestApplyEnvUnsetAndEmpty(t *testing.T) {
	cfg := createDefaultConfig()
	want := *cfg
	overrides, err := applyEnv(cfg, mapLookup(map[string]string{
		"BEYLA_BPF_BATCH_LENGTH": "",
		"BEYLA_BPF_WAKEUP_LEN":   "  ",
	}))
	require.NoError(t, err)
	assert.Empty(t, overrides)
	assert.Equal(t, &want, cfg)
}

func TestApplyEnvBadValues(t *testing.T) {
	cfg := createDefaultConfig()
	want := *cfg
	overrides, err := applyEnv(cfg, mapLookup(map[string]string{
		"BEYLA_BPF_CONTEXT_PROPAGATION":   "al",
		"BEYLA_OVERRIDE_BPF_LOOP_ENABLED": "yes",
		"BEYLA_BPF_TC_BACKEND":            "xdp",
		"BEYLA_BPF_WAKEUP_LEN":            "-1",
		"BEYLA_BPF_BATCH_TIMEOUT":         "200",
		"BEYLA_BPF_BATCH_LENGTH":          "many",
		"BEYLA_BPF_TRACK_REQUEST_HEADERS": "on",
	}))
	require.Error(t, err)
	assert.Empty(t, overrides)
	assert.Equal(t, &want, cfg, "a bad value must leave its field unchanged")
	for _, msg := range []string{
		`BEYLA_BPF_CONTEXT_PROPAGATION: unknown value "al"; want all, headers, tcp or disabled`,
		`BEYLA_OVERRIDE_BPF_LOOP_ENABLED: invalid boolean "yes"; want true or false`,
		`BEYLA_BPF_TC_BACKEND: unknown value "xdp"; want auto, tc or tcx`,
		`BEYLA_BPF_WAKEUP_LEN: must not be negative, got -1`,
		`BEYLA_BPF_BATCH_TIMEOUT: invalid duration "200"; want e.g. 200ms`,
		`BEYLA_BPF_BATCH_LENGTH: invalid integer "many"`,
		`BEYLA_BPF_TRACK_REQUEST_HEADERS: invalid boolean "on"; want true or false`,
	} {
		assert.Contains(t, err.Error(), msg)
	}
	assert.Len(t, splitLines(err.Error()), 7)
}

func TestApplyEnvPartial(t *testing.T) {
	cfg := createDefaultConfig()
	overrides, err := applyEnv(cfg, mapLookup(map[string]string{
		"BEYLA_BPF_BATCH_LENGTH": "5",
		"BEYLA_BPF_WAKEUP_LEN":   "x",
	}))
	require.EqualError(t, err, `BEYLA_BPF_WAKEUP_LEN: invalid integer "x"`)
	assert.Equal(t, []string{"BEYLA_BPF_BATCH_LENGTH"}, overrides)
	assert.Equal(t, 5, cfg.EBPF.BatchLength)
	assert.Equal(t, defaultWakeupLen, cfg.EBPF.WakeupLen)
}

func TestSamplerParsed(t *testing.T) {
	tests := []struct {
		cfg  SamplerConfig
		want Sampler
		str  string
	}{
		{SamplerConfig{}, Sampler{Root: SamplerAlwaysOn, ParentBased: true}, "parentbased_always_on"},
		{SamplerConfig{Name: "always_on"}, Sampler{Root: SamplerAlwaysOn}, "always_on"},
		{SamplerConfig{Name: " Always_Off "}, Sampler{Root: SamplerAlwaysOff}, "always_off"},
		{SamplerConfig{Name: "traceidratio"}, Sampler{Root: SamplerTraceIDRatio, Ratio: 1}, "traceidratio:1"},
		{SamplerConfig{Name: "traceidratio", Arg: "0"}, Sampler{Root: SamplerTraceIDRatio, Ratio: 0}, "traceidratio:0"},
		{SamplerConfig{Name: "traceidratio", Arg: " 0.25 "}, Sampler{Root: SamplerTraceIDRatio, Ratio: 0.25}, "traceidratio:0.25"},
		{SamplerConfig{Name: "parentbased_always_on"}, Sampler{Root: SamplerAlwaysOn, ParentBased: true}, "parentbased_always_on"},
		{SamplerConfig{Name: "parentbased_always_off"}, Sampler{Root: SamplerAlwaysOff, ParentBased: true}, "parentbased_always_off"},
		{SamplerConfig{Name: "parentbased_traceidratio", Arg: "1"}, Sampler{Root: SamplerTraceIDRatio, ParentBased: true, Ratio: 1}, "parentbased_traceidratio:1"},
	}
	for _, tt := range tests {
		got, err := tt.cfg.Parsed()
		require.NoError(t, err, "%+v", tt.cfg)
		assert.Equal(t, tt.want, got, "%+v", tt.cfg)
		assert.Equal(t, tt.str, got.String())
	}
	for _, bad := range []SamplerConfig{
		{Name: "parentbased_"},
		{Name: "parentbased_parentbased_always_on"},
		{Name: "ratio"},
		{Name: "traceidratio", Arg: "-0.1"},
		{Name: "traceidratio", Arg: "NaN"},
		{Name: "traceidratio", Arg: "25%"},
		{Name: "always_off", Arg: "1"},
		{Arg: "1"},
	} {
		_, err := bad.Parsed()
		assert.Error(t, err, "%+v", bad)
	}
}

func TestSamplerEnv(t *testing.T) {
	tests := []struct {
		name     string
		cfg      SamplerConfig
		env      map[string]string
		want     SamplerConfig
		wantUsed []string
		wantErr  string
	}{
		{
			name:     "env fills an unset sampler",
			env:      map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
			want:     SamplerConfig{Name: "traceidratio", Arg: "0.1"},
			wantUsed: []string{"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"},
		},
		{
			name:     "ratio without arg",
			env:      map[string]string{"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"},
			want:     SamplerConfig{Name: "parentbased_traceidratio"},
			wantUsed: []string{"OTEL_TRACES_SAMPLER"},
		},
		{
			name:     "arg ignored by a sampler without one, as in the SDKs",
			env:      map[string]string{"OTEL_TRACES_SAMPLER": "always_off", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
			want:     SamplerConfig{Name: "always_off"},
			wantUsed: []string{"OTEL_TRACES_SAMPLER"},
		},
		{
			name: "arg alone is ignored",
			env:  map[string]string{"OTEL_TRACES_SAMPLER_ARG": "0.5"},
		},
		{
			name: "empty variables count as unset",
			env:  map[string]string{"OTEL_TRACES_SAMPLER": " ", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
		},
		{
			name: "configuration wins",
			cfg:  SamplerConfig{Name: "always_on"},
			env:  map[string]string{"OTEL_TRACES_SAMPLER": "always_off", "OTEL_TRACES_SAMPLER_ARG": "x"},
			want: SamplerConfig{Name: "always_on"},
		},
		{
			name:    "unknown sampler",
			env:     map[string]string{"OTEL_TRACES_SAMPLER": "xray"},
			wantErr: `OTEL_TRACES_SAMPLER: unknown sampler "xray"`,
		},
		{
			name:    "bad ratio",
			env:     map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
			wantErr: `OTEL_TRACES_SAMPLER_ARG: arg "2": traceidratio wants a ratio from 0 to 1, e.g. 0.25`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := createDefaultConfig()
			cfg.Discovery.Instrument = []Selector{{PID: 1}}
			cfg.Sampler = tt.cfg
			used, err := applyEnv(cfg, mapLookup(tt.env))
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Equal(t, tt.cfg, cfg.Sampler, "a bad value leaves the sampler unchanged")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.wantUsed, used)
			assert.Equal(t, tt.want, cfg.Sampler)
			require.NoError(t, cfg.Validate())
		})
	}
}

func TestCreateWithSamplerEnv(t *testing.T) {
	t.Setenv("OTEL_TRACES_SAMPLER", "nope")
	cfg := createDefaultConfig()
	cfg.Discovery.Instrument = []Selector{{PID: 1}}
	_, err := createTracesReceiver(t.Context(), receivertest.NewNopSettings(metadata.Type), cfg, consumertest.NewNop())
	require.Error(t, err)
	assert.Contains(t, err.Error(), `OTEL_TRACES_SAMPLER: unknown sampler "nope"`)

	// The configured sampler wins: the variable is not even parsed.
	cfg.Sampler = SamplerConfig{Name: "traceidratio", Arg: "0.5"}
	_, err = createTracesReceiver(t.Context(), receivertest.NewNopSettings(metadata.Type), cfg, consumertest.NewNop())
	require.NoError(t, err)
}
