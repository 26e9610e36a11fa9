package deploy

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const (
	daemonSetFile = "kubernetes/daemonset.yaml"
	configMapFile = "kubernetes/configmap.yaml"
	dockerfile    = "Dockerfile"
	// distro is the ocb output (`make distro`), relative to this directory.
	distro = "../_build/otelcol-ebpf"

	containerName = "otelcol-ebpf"
	memoryLimit   = "120Mi"
	memoryLimitMi = 120
)

// wantCaps is the capability set of the DaemonSet's container, in any order.
var wantCaps = []string{"BPF", "SYS_PTRACE", "NET_RAW", "CHECKPOINT_RESTORE", "DAC_READ_SEARCH", "PERFMON", "NET_ADMIN"}

// The subset of the Kubernetes objects the tests read.

type meta struct {
	Name      string `yaml:"name"`
	Namespace string `yaml:"namespace"`
}

type object struct {
	APIVersion string    `yaml:"apiVersion"`
	Kind       string    `yaml:"kind"`
	Metadata   meta      `yaml:"metadata"`
	node       yaml.Node // the whole document, decoded again per kind
}

type configMap struct {
	Metadata meta              `yaml:"metadata"`
	Data     map[string]string `yaml:"data"`
}

type daemonSet struct {
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		UpdateStrategy struct {
			Type string `yaml:"type"`
		} `yaml:"updateStrategy"`
		Template struct {
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	ServiceAccountName            string       `yaml:"serviceAccountName"`
	HostNetwork                   bool         `yaml:"hostNetwork"`
	HostPID                       bool         `yaml:"hostPID"`
	DNSPolicy                     string       `yaml:"dnsPolicy"`
	TerminationGracePeriodSeconds *int         `yaml:"terminationGracePeriodSeconds"`
	Tolerations                   []toleration `yaml:"tolerations"`
	Containers                    []container  `yaml:"containers"`
	Volumes                       []volume     `yaml:"volumes"`
}

type toleration struct {
	Key      string `yaml:"key"`
	Operator string `yaml:"operator"`
	Effect   string `yaml:"effect"`
}

type container struct {
	Name            string          `yaml:"name"`
	Args            []string        `yaml:"args"`
	Env             []envVar        `yaml:"env"`
	SecurityContext securityContext `yaml:"securityContext"`
	Resources       struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	LivenessProbe  *probe        `yaml:"livenessProbe"`
	ReadinessProbe *probe        `yaml:"readinessProbe"`
	VolumeMounts   []volumeMount `yaml:"volumeMounts"`
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		FieldRef *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
	} `yaml:"valueFrom"`
}

type securityContext struct {
	Privileged               *bool `yaml:"privileged"`
	RunAsUser                *int  `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
	Capabilities             struct {
		Add  []string `yaml:"add"`
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port int    `yaml:"port"`
	} `yaml:"httpGet"`
}

type volumeMount struct {
	Name      string `yaml:"name"`
	MountPath string `yaml:"mountPath"`
	ReadOnly  bool   `yaml:"readOnly"`
}

type volume struct {
	Name     string `yaml:"name"`
	HostPath *struct {
		Path string `yaml:"path"`
	} `yaml:"hostPath"`
	ConfigMap *struct {
		Name string `yaml:"name"`
	} `yaml:"configMap"`
}

// The subset of the collector config the tests read.
type collectorConfig struct {
	Receivers map[string]struct {
		Discovery struct {
			Instrument []map[string]any `yaml:"instrument"`
		} `yaml:"discovery"`
		EBPF struct {
			ContextPropagation string `yaml:"context_propagation"`
		} `yaml:"ebpf"`
	} `yaml:"receivers"`
	Processors map[string]struct {
		LimitMiB      int `yaml:"limit_mib"`
		SpikeLimitMiB int `yaml:"spike_limit_mib"`
	} `yaml:"processors"`
	Exporters  map[string]any `yaml:"exporters"`
	Extensions map[string]struct {
		Endpoint string `yaml:"endpoint"`
	} `yaml:"extensions"`
	Service struct {
		Extensions []string `yaml:"extensions"`
		Pipelines  map[string]struct {
			Receivers  []string `yaml:"receivers"`
			Processors []string `yaml:"processors"`
			Exporters  []string `yaml:"exporters"`
		} `yaml:"pipelines"`
	} `yaml:"service"`
}

// readObjects parses every document of a multi-document manifest.
func readObjects(t *testing.T, path string) []object {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var objs []object
	for {
		var o object
		if err := dec.Decode(&o.node); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: document %d: %v", path, len(objs)+1, err)
		}
		if err := o.node.Decode(&o); err != nil {
			t.Fatalf("%s: document %d: %v", path, len(objs)+1, err)
		}
		if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
			t.Fatalf("%s: document %d lacks apiVersion, kind or metadata.name", path, len(objs)+1)
		}
		objs = append(objs, o)
	}
	return objs
}

// decodeKind decodes the only object of kind in objs into v.
func decodeKind(t *testing.T, objs []object, kind string, v any) {
	t.Helper()
	var found []object
	for _, o := range objs {
		if o.Kind == kind {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s, found %d", kind, len(found))
	}
	if err := found[0].node.Decode(v); err != nil {
		t.Fatalf("decode %s: %v", kind, err)
	}
}

func loadDaemonSet(t *testing.T) (daemonSet, container) {
	t.Helper()
	var ds daemonSet
	decodeKind(t, readObjects(t, daemonSetFile), "DaemonSet", &ds)
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name == containerName {
			return ds, c
		}
	}
	t.Fatalf("DaemonSet has no container %q", containerName)
	return ds, container{}
}

func loadConfigMap(t *testing.T) configMap {
	t.Helper()
	var cm configMap
	decodeKind(t, readObjects(t, configMapFile), "ConfigMap", &cm)
	return cm
}

// collectorConfigText is the collector config the DaemonSet runs: the
// ConfigMap key that --config points at through the config volume.
func collectorConfigText(t *testing.T) string {
	t.Helper()
	ds, c := loadDaemonSet(t)
	cm := loadConfigMap(t)

	var cfgPath string
	for _, a := range c.Args {
		if p, ok := strings.CutPrefix(a, "--config="); ok {
			cfgPath = p
		}
	}
	if cfgPath == "" {
		t.Fatalf("container args %q have no --config=", c.Args)
	}
	for _, m := range c.VolumeMounts {
		if filepath.Dir(cfgPath) != m.MountPath {
			continue
		}
		for _, v := range ds.Spec.Template.Spec.Volumes {
			if v.Name != m.Name {
				continue
			}
			if v.ConfigMap == nil || v.ConfigMap.Name != cm.Metadata.Name {
				t.Fatalf("volume %q mounted at %s is not ConfigMap %q", v.Name, m.MountPath, cm.Metadata.Name)
			}
			if cm.Metadata.Namespace != ds.Metadata.Namespace {
				t.Fatalf("ConfigMap namespace %q, DaemonSet namespace %q", cm.Metadata.Namespace, ds.Metadata.Namespace)
			}
			text, ok := cm.Data[filepath.Base(cfgPath)]
			if !ok {
				t.Fatalf("ConfigMap %q has no key %q", cm.Metadata.Name, filepath.Base(cfgPath))
			}
			return text
		}
	}
	t.Fatalf("no volume mounted at %s, the directory of --config", filepath.Dir(cfgPath))
	return ""
}

func TestDaemonSet(t *testing.T) {
	objs := readObjects(t, daemonSetFile)
	ds, c := loadDaemonSet(t)
	pod := ds.Spec.Template.Spec

	t.Run("ServiceAccount", func(t *testing.T) {
		var sa struct{ Metadata meta }
		decodeKind(t, objs, "ServiceAccount", &sa)
		if pod.ServiceAccountName != sa.Metadata.Name || sa.Metadata.Namespace != ds.Metadata.Namespace {
			t.Errorf("serviceAccountName %q in %q, ServiceAccount %q in %q",
				pod.ServiceAccountName, ds.Metadata.Namespace, sa.Metadata.Name, sa.Metadata.Namespace)
		}
	})

	t.Run("pod", func(t *testing.T) {
		if !pod.HostPID {
			t.Error("hostPID must be true: discovery must see the node's processes")
		}
		if !pod.HostNetwork {
			t.Error("hostNetwork must be true: TC programs attach to the node's interfaces")
		}
		if pod.DNSPolicy != "ClusterFirstWithHostNet" {
			t.Errorf("dnsPolicy %q, want ClusterFirstWithHostNet (cluster DNS with hostNetwork)", pod.DNSPolicy)
		}
		if g := pod.TerminationGracePeriodSeconds; g == nil || *g != 30 {
			t.Errorf("terminationGracePeriodSeconds %v, want 30", g)
		}
		if ds.Spec.UpdateStrategy.Type != "RollingUpdate" {
			t.Errorf("updateStrategy.type %q, want RollingUpdate", ds.Spec.UpdateStrategy.Type)
		}
		if !slices.ContainsFunc(pod.Tolerations, func(tl toleration) bool {
			return tl.Operator == "Exists" && tl.Key == "" && tl.Effect == ""
		}) {
			t.Errorf("tolerations %+v: want {operator: Exists} (every node, every taint)", pod.Tolerations)
		}
	})

	t.Run("securityContext", func(t *testing.T) {
		sc := c.SecurityContext
		if sc.Privileged == nil || *sc.Privileged {
			t.Error("privileged must be set to false")
		}
		if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
			t.Error("runAsUser must be 0: capabilities are effective only for root")
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Error("readOnlyRootFilesystem must be true")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("allowPrivilegeEscalation must be set to false")
		}
		if !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
			t.Errorf("capabilities.drop %q, want [ALL]", sc.Capabilities.Drop)
		}
		got := slices.Sorted(slices.Values(sc.Capabilities.Add))
		want := slices.Sorted(slices.Values(wantCaps))
		if !slices.Equal(got, want) {
			t.Errorf("capabilities.add %q, want exactly %q", got, want)
		}
	})

	t.Run("resources", func(t *testing.T) {
		if got := c.Resources.Limits["memory"]; got != memoryLimit {
			t.Errorf("limits.memory %q, want %s", got, memoryLimit)
		}
		for _, r := range []string{"cpu", "memory"} {
			if c.Resources.Requests[r] == "" {
				t.Errorf("requests.%s not set", r)
			}
		}
	})

	t.Run("env", func(t *testing.T) {
		env := map[string]envVar{}
		for _, e := range c.Env {
			env[e.Name] = e
		}
		if e := env["K8S_NODE_NAME"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
			t.Error("K8S_NODE_NAME must come from fieldRef spec.nodeName")
		}
		if env["OTEL_EXPORTER_OTLP_ENDPOINT"].Value == "" {
			t.Error("OTEL_EXPORTER_OTLP_ENDPOINT must be set: the exporter endpoint")
		}
		if v := env["GOMEMLIMIT"].Value; !strings.HasSuffix(v, "MiB") {
			t.Errorf("GOMEMLIMIT %q, want NNMiB", v)
		}
	})

	t.Run("mounts", func(t *testing.T) {
		hostPaths := map[string]string{} // volume name -> host path
		for _, v := range pod.Volumes {
			if v.HostPath != nil {
				hostPaths[v.Name] = v.HostPath.Path
			}
		}
		mounted := func(host, path string) *volumeMount {
			for i, m := range c.VolumeMounts {
				if m.MountPath == path && hostPaths[m.Name] == host {
					return &c.VolumeMounts[i]
				}
			}
			return nil
		}
		// Without the host's cgroup v2 root the sockops program cannot
		// attach: spans work, no traceparent is injected.
		if m := mounted("/sys/fs/cgroup", "/sys/fs/cgroup"); m == nil {
			t.Error("hostPath /sys/fs/cgroup must be mounted at /sys/fs/cgroup (sockops attach)")
		} else if !m.ReadOnly {
			t.Error("/sys/fs/cgroup mount should be readOnly: attaching only opens the directory")
		}
		if m := mounted("/sys/kernel/security", "/sys/kernel/security"); m == nil || !m.ReadOnly {
			t.Error("hostPath /sys/kernel/security must be mounted read-only (lockdown mode)")
		}
	})

	t.Run("probes", func(t *testing.T) {
		for name, p := range map[string]*probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Port != 13133 {
				t.Errorf("%sProbe must be httpGet on 13133 (health_check)", name)
			}
		}
	})
}

func TestConfigMap(t *testing.T) {
	text := collectorConfigText(t)

	var cfg collectorConfig
	if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
		t.Fatalf("collector config is not YAML: %v", err)
	}

	rcv, ok := cfg.Receivers["ebpf_tracing"]
	if !ok {
		t.Fatal("no receivers.ebpf_tracing")
	}
	if rcv.EBPF.ContextPropagation != "all" {
		t.Errorf("ebpf.context_propagation %q, want all", rcv.EBPF.ContextPropagation)
	}
	if len(rcv.Discovery.Instrument) == 0 {
		t.Error("discovery.instrument is empty")
	}

	ml, ok := cfg.Processors["memory_limiter"]
	if !ok {
		t.Fatal("no processors.memory_limiter")
	}
	if ml.LimitMiB <= 0 || ml.LimitMiB >= memoryLimitMi {
		t.Errorf("memory_limiter.limit_mib %d, want below the container limit %s", ml.LimitMiB, memoryLimit)
	}
	if ml.SpikeLimitMiB <= 0 || ml.SpikeLimitMiB >= ml.LimitMiB {
		t.Errorf("memory_limiter.spike_limit_mib %d, want 0 < spike < limit_mib %d", ml.SpikeLimitMiB, ml.LimitMiB)
	}

	hc, ok := cfg.Extensions["health_check"]
	if !ok || hc.Endpoint != "0.0.0.0:13133" || !slices.Contains(cfg.Service.Extensions, "health_check") {
		t.Error("health_check on 0.0.0.0:13133 must be defined and enabled (the probes use it)")
	}

	p, ok := cfg.Service.Pipelines["traces"]
	if !ok {
		t.Fatal("no traces pipeline")
	}
	if !slices.Equal(p.Receivers, []string{"ebpf_tracing"}) {
		t.Errorf("traces receivers %q, want [ebpf_tracing]", p.Receivers)
	}
	if len(p.Processors) == 0 || p.Processors[0] != "memory_limiter" {
		t.Errorf("traces processors %q: memory_limiter must come first", p.Processors)
	}
	if i := slices.Index(p.Processors, "batch"); i < 1 {
		t.Errorf("traces processors %q: batch must follow memory_limiter", p.Processors)
	}
	for _, name := range p.Processors {
		if _, ok := cfg.Processors[name]; !ok {
			t.Errorf("traces pipeline uses processor %q, which is not defined", name)
		}
	}
	if len(p.Exporters) == 0 {
		t.Error("traces pipeline has no exporter")
	}
	for _, name := range p.Exporters {
		if _, ok := cfg.Exporters[name]; !ok {
			t.Errorf("traces pipeline uses exporter %q, which is not defined", name)
		}
	}

	t.Run("validate", func(t *testing.T) {
		if _, err := os.Stat(distro); errors.Is(err, fs.ErrNotExist) {
			t.Log("no distro at " + distro + " (make distro builds it; make test does): config not validated")
			t.SkipNow()
		} else if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(t.Context(), distro, "validate", "--config="+path)
		cmd.Env = append(os.Environ(), "OTEL_EXPORTER_OTLP_ENDPOINT=127.0.0.1:4317", "K8S_NODE_NAME=test")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s validate: %v\n%s", distro, err, out)
		}
	})
}

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	// Instructions, with comments dropped and continuation lines joined.
	var lines []string
	var cur strings.Builder
	for l := range strings.SplitSeq(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(l, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(l)
		lines = append(lines, cur.String())
		cur.Reset()
	}

	var froms, copies []string
	var entrypoint, cmd string
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			froms = append(froms, rest)
		case "COPY":
			copies = append(copies, rest)
		case "ENTRYPOINT":
			entrypoint = rest
		case "CMD":
			cmd = rest
		}
	}
	all := strings.Join(lines, "\n")

	if len(froms) != 2 || !strings.HasPrefix(froms[0], "golang:1.26 AS build") {
		t.Errorf("FROM %q: want two stages, the first golang:1.26 AS build", froms)
	}
	if len(froms) == 2 && !strings.Contains(froms[1], "distroless/static") && !strings.Contains(froms[1], "debian") {
		t.Errorf("final stage %q: want a small base", froms[1])
	}
	if !strings.Contains(all, "go install go.opentelemetry.io/collector/cmd/builder@v0.165.0") {
		t.Error("ocb must be installed pinned at v0.165.0")
	}
	if !strings.Contains(all, "builder --config builder-config.yaml") {
		t.Error("ocb must run on builder-config.yaml")
	}
	if !strings.Contains(all, "CGO_ENABLED=0") {
		t.Error("CGO_ENABLED=0 is needed for a static binary on distroless/static")
	}
	if entrypoint != `["/otelcol-ebpf"]` {
		t.Errorf("ENTRYPOINT %s, want [\"/otelcol-ebpf\"]", entrypoint)
	}
	if cmd != `["--config=/etc/otelcol-ebpf/config.yaml"]` {
		t.Errorf("CMD %s, want [\"--config=/etc/otelcol-ebpf/config.yaml\"]", cmd)
	}
	if !slices.ContainsFunc(copies, func(c string) bool {
		return strings.HasPrefix(c, "--from=build ") && strings.HasSuffix(c, " /otelcol-ebpf")
	}) {
		t.Error("the final stage must copy /otelcol-ebpf from the build stage")
	}
	// Sources copied from the build context (the repository root) must exist.
	for _, c := range copies {
		if strings.HasPrefix(c, "--") {
			continue
		}
		f := strings.Fields(c)
		for _, src := range f[:len(f)-1] {
			if src == "." {
				continue
			}
			if _, err := os.Stat(filepath.Join("..", src)); err != nil {
				t.Errorf("COPY %s: %v", c, err)
			}
		}
	}
	if !slices.ContainsFunc(copies, func(c string) bool { return strings.HasSuffix(c, " /etc/otelcol-ebpf/config.yaml") }) {
		t.Error("the image must carry a default config at /etc/otelcol-ebpf/config.yaml")
	}
}
