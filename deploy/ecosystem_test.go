package deploy

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// Tests of the manifests beyond the DaemonSet: RBAC for k8s_attributes, the
// scale-out gateway and agent configs, the RED metrics config and the
// compose file. The collector configs are run through the built distro's
// validate, which checks every component's settings.

const (
	rbacFile        = "kubernetes/rbac.yaml"
	gatewayFile     = "kubernetes/gateway.yaml"
	lbConfigMapFile = "kubernetes/configmap-loadbalancing.yaml"
	redFile         = "red-metrics.yaml"
	composeFile     = "docker-compose.yaml"
)

// validateWithDistro runs the distro's validate on a collector config; it
// skips, with a log line, when the distro is not built (make test builds it).
func validateWithDistro(t *testing.T, text string) {
	t.Helper()
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
}

// configMapText is the config.yaml key of the only ConfigMap in path.
func configMapText(t *testing.T, path string) string {
	t.Helper()
	var cm configMap
	decodeKind(t, readObjects(t, path), "ConfigMap", &cm)
	text, ok := cm.Data["config.yaml"]
	if !ok {
		t.Fatalf("%s: ConfigMap has no config.yaml", path)
	}
	return text
}

// pipelineConfig is the part of a collector config these tests read.
type pipelineConfig struct {
	Processors map[string]map[string]any `yaml:"processors"`
	Exporters  map[string]map[string]any `yaml:"exporters"`
	Connectors map[string]map[string]any `yaml:"connectors"`
	Service    struct {
		Pipelines map[string]struct {
			Receivers  []string `yaml:"receivers"`
			Processors []string `yaml:"processors"`
			Exporters  []string `yaml:"exporters"`
		} `yaml:"pipelines"`
	} `yaml:"service"`
}

func parseConfig(t *testing.T, text string) pipelineConfig {
	t.Helper()
	var cfg pipelineConfig
	if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
		t.Fatalf("collector config is not YAML: %v", err)
	}
	return cfg
}

func TestRBAC(t *testing.T) {
	objs := readObjects(t, rbacFile)
	var role struct {
		Metadata meta
		Rules    []struct {
			APIGroups []string `yaml:"apiGroups"`
			Resources []string `yaml:"resources"`
			Verbs     []string `yaml:"verbs"`
		}
	}
	decodeKind(t, objs, "ClusterRole", &role)
	var binding struct {
		RoleRef struct {
			Kind string `yaml:"kind"`
			Name string `yaml:"name"`
		} `yaml:"roleRef"`
		Subjects []struct {
			Kind      string `yaml:"kind"`
			Name      string `yaml:"name"`
			Namespace string `yaml:"namespace"`
		} `yaml:"subjects"`
	}
	decodeKind(t, objs, "ClusterRoleBinding", &binding)

	pods := false
	for _, r := range role.Rules {
		for _, v := range r.Verbs {
			if !slices.Contains([]string{"get", "list", "watch"}, v) {
				t.Errorf("rule %v: verb %q; k8s_attributes only reads", r, v)
			}
		}
		if slices.Contains(r.APIGroups, "") && slices.Contains(r.Resources, "pods") &&
			slices.Contains(r.Verbs, "list") && slices.Contains(r.Verbs, "watch") {
			pods = true
		}
	}
	if !pods {
		t.Error("the ClusterRole must allow list and watch of pods")
	}

	ds, _ := loadDaemonSet(t)
	pod := ds.Spec.Template.Spec
	if binding.RoleRef.Kind != "ClusterRole" || binding.RoleRef.Name != role.Metadata.Name {
		t.Errorf("roleRef %+v, want ClusterRole %q", binding.RoleRef, role.Metadata.Name)
	}
	if !slices.ContainsFunc(binding.Subjects, func(s struct {
		Kind      string `yaml:"kind"`
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	}) bool {
		return s.Kind == "ServiceAccount" && s.Name == pod.ServiceAccountName && s.Namespace == ds.Metadata.Namespace
	}) {
		t.Errorf("subjects %+v: want the DaemonSet's ServiceAccount %s/%s", binding.Subjects, ds.Metadata.Namespace, pod.ServiceAccountName)
	}
	var tmpl struct {
		Spec struct {
			Template struct {
				Spec struct {
					Automount *bool `yaml:"automountServiceAccountToken"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	decodeKind(t, readObjects(t, daemonSetFile), "DaemonSet", &tmpl)
	if a := tmpl.Spec.Template.Spec.Automount; a == nil || !*a {
		t.Error("the DaemonSet's pod must mount the service account token (k8s_attributes calls the API)")
	}
}

// TestK8sAttributesConfig checks the DaemonSet config's k8s_attributes
// settings that the fake-API test (test/e2e) exercises.
func TestK8sAttributesConfig(t *testing.T) {
	for _, file := range []string{configMapFile, lbConfigMapFile} {
		t.Run(filepath.Base(file), func(t *testing.T) {
			cfg := parseConfig(t, configMapText(t, file))
			k, ok := cfg.Processors["k8s_attributes"]
			if !ok {
				t.Fatal("no processors.k8s_attributes")
			}
			b, _ := yaml.Marshal(k)
			s := string(b)
			for _, want := range []string{"auth_type: serviceAccount", "node_from_env_var: K8S_NODE_NAME", "name: container.id", "name: k8s.pod.uid",
				"k8s.pod.name", "k8s.namespace.name", "k8s.deployment.name"} {
				if !strings.Contains(s, want) {
					t.Errorf("k8s_attributes lacks %q:\n%s", want, s)
				}
			}
			if i, j := strings.Index(s, "name: container.id"), strings.Index(s, "name: k8s.pod.uid"); i > j {
				t.Error("pod_association: container.id must come before k8s.pod.uid")
			}
			p := cfg.Service.Pipelines["traces"].Processors
			if i := slices.Index(p, "k8s_attributes"); i < 1 || p[0] != "memory_limiter" {
				t.Errorf("traces processors %q: k8s_attributes after memory_limiter", p)
			}
		})
	}
}

func TestScaleOut(t *testing.T) {
	objs := readObjects(t, gatewayFile)
	var svc struct {
		Metadata meta
		Spec     struct {
			ClusterIP string            `yaml:"clusterIP"`
			Selector  map[string]string `yaml:"selector"`
			Ports     []struct {
				Port int `yaml:"port"`
			} `yaml:"ports"`
		}
	}
	decodeKind(t, objs, "Service", &svc)
	var dep struct {
		Metadata meta
		Spec     struct {
			Replicas int `yaml:"replicas"`
			Template struct {
				Metadata struct {
					Labels map[string]string `yaml:"labels"`
				} `yaml:"metadata"`
			} `yaml:"template"`
		}
	}
	decodeKind(t, objs, "Deployment", &dep)
	if svc.Spec.ClusterIP != "None" {
		t.Errorf("gateway Service clusterIP %q, want None (headless: the dns resolver needs one record per pod)", svc.Spec.ClusterIP)
	}
	for k, v := range svc.Spec.Selector {
		if dep.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the gateway pods %v", k, v, dep.Spec.Template.Metadata.Labels)
		}
	}
	if dep.Spec.Replicas < 2 {
		t.Errorf("gateway replicas %d: a tier means at least 2", dep.Spec.Replicas)
	}

	gw := configMapText(t, gatewayFile)
	gcfg := parseConfig(t, gw)
	if !slices.Contains(gcfg.Service.Pipelines["traces"].Processors, "tail_sampling") {
		t.Error("the gateway's traces pipeline must run tail_sampling")
	}

	agent := configMapText(t, lbConfigMapFile)
	acfg := parseConfig(t, agent)
	lb, ok := acfg.Exporters["load_balancing"]
	if !ok || !slices.Contains(acfg.Service.Pipelines["traces"].Exporters, "load_balancing") {
		t.Fatal("the agent config must export traces through load_balancing")
	}
	if lb["routing_key"] != "traceID" {
		t.Errorf("load_balancing.routing_key %v, want traceID", lb["routing_key"])
	}
	dns, _ := lb["resolver"].(map[string]any)["dns"].(map[string]any)
	wantHost := svc.Metadata.Name + "." + svc.Metadata.Namespace + ".svc.cluster.local"
	if dns == nil || dns["hostname"] != wantHost {
		t.Errorf("load_balancing.resolver.dns %v, want hostname %s (the gateway Service)", dns, wantHost)
	}
	if len(svc.Spec.Ports) == 0 || dns == nil || dns["port"] != "4317" || svc.Spec.Ports[0].Port != 4317 {
		t.Errorf("dns port %v and the Service's ports %v must both be 4317", dns["port"], svc.Spec.Ports)
	}

	t.Run("validate gateway", func(t *testing.T) { validateWithDistro(t, gw) })
	t.Run("validate agent", func(t *testing.T) { validateWithDistro(t, agent) })
}

func TestREDMetricsConfig(t *testing.T) {
	b, err := os.ReadFile(redFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := parseConfig(t, string(b))
	sm, ok := cfg.Connectors["span_metrics"]
	if !ok {
		t.Fatal("no connectors.span_metrics")
	}
	var dims []string
	for _, d := range sm["dimensions"].([]any) {
		dims = append(dims, d.(map[string]any)["name"].(string))
	}
	for _, want := range []string{"http.route", "http.request.method", "http.response.status_code"} {
		if !slices.Contains(dims, want) {
			t.Errorf("span_metrics dimensions %q lack %s", dims, want)
		}
	}
	for _, bad := range []string{"url.path", "url.full", "url.query"} {
		if slices.Contains(dims, bad) {
			t.Errorf("span_metrics dimension %s is unbounded: use http.route", bad)
		}
	}
	if n, _ := sm["aggregation_cardinality_limit"].(int); n <= 0 {
		t.Error("span_metrics.aggregation_cardinality_limit must bound the series")
	}
	if !slices.Contains(cfg.Service.Pipelines["traces"].Exporters, "span_metrics") ||
		!slices.Contains(cfg.Service.Pipelines["metrics"].Receivers, "span_metrics") ||
		!slices.Contains(cfg.Service.Pipelines["metrics"].Exporters, "prometheus") {
		t.Error("want traces → span_metrics → metrics → prometheus")
	}
	t.Run("validate", func(t *testing.T) { validateWithDistro(t, string(b)) })
}

func TestDockerCompose(t *testing.T) {
	b, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Build struct {
				Context    string `yaml:"context"`
				Dockerfile string `yaml:"dockerfile"`
			} `yaml:"build"`
			PID         string   `yaml:"pid"`
			NetworkMode string   `yaml:"network_mode"`
			Privileged  bool     `yaml:"privileged"`
			CapAdd      []string `yaml:"cap_add"`
			CapDrop     []string `yaml:"cap_drop"`
			Volumes     []string `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	s, ok := c.Services[containerName]
	if !ok {
		t.Fatalf("no service %q", containerName)
	}
	if s.PID != "host" || s.NetworkMode != "host" {
		t.Errorf("pid %q, network_mode %q: both must be host (discovery, TC)", s.PID, s.NetworkMode)
	}
	if s.Privileged {
		t.Error("privileged: the capabilities below are enough")
	}
	if !slices.Equal(s.CapDrop, []string{"ALL"}) || !slices.Equal(slices.Sorted(slices.Values(s.CapAdd)), slices.Sorted(slices.Values(wantCaps))) {
		t.Errorf("cap_drop %q, cap_add %q: want [ALL] and the DaemonSet's %q", s.CapDrop, s.CapAdd, wantCaps)
	}
	for _, want := range []string{"/sys/fs/cgroup:/sys/fs/cgroup:ro", "/sys/kernel/security:/sys/kernel/security:ro"} {
		if !slices.Contains(s.Volumes, want) {
			t.Errorf("volumes %q lack %s", s.Volumes, want)
		}
	}
	if df := filepath.Join(s.Build.Context, s.Build.Dockerfile); filepath.Clean(df) != filepath.Join("..", "deploy", dockerfile) {
		t.Errorf("build %s, want the repository root and deploy/Dockerfile", df)
	}

	t.Run("docker-compose config", func(t *testing.T) {
		bin, err := exec.LookPath("docker-compose")
		if err != nil {
			t.Log("no docker-compose (make test installs Debian's): compose file not validated")
			t.SkipNow()
		}
		if out, err := exec.CommandContext(t.Context(), bin, "-f", composeFile, "config", "-q").CombinedOutput(); err != nil {
			t.Fatalf("docker-compose config: %v\n%s", err, out)
		}
	})
}
