//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.yaml.in/yaml/v3"
)

// TestK8sAttributesFakeAPI runs the built distro with the k8s_attributes
// settings of deploy/kubernetes/configmap.yaml (only auth_type changed to
// kubeConfig) against a fake Kubernetes API server, feeds it spans over
// OTLP, and checks what reaches the sink: a span whose resource has a known
// container.id gets its pod's name, uid, namespace, deployment and
// container name, one with a known k8s.pod.uid its pod's name and namespace; one with an unknown container.id gets nothing.
func TestK8sAttributesFakeAPI(t *testing.T) {
	const (
		node        = "node-a"
		containerID = "3f0c1a7e9b2d4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6"
		webUID      = "6b1e1d4c-0000-4000-8000-00000000a001"
		dbUID       = "6b1e1d4c-0000-4000-8000-00000000b002"
	)
	api := newFakeKubeAPI(t, deployedRBAC(t), map[string][]any{
		"/api/v1/pods": {
			fakePod("web-6d8f7c9b5-x2x7k", "shop", webUID, node, "containerd://"+containerID,
				map[string]any{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d8f7c9b5", "uid": "rs-web", "controller": true}),
			fakePod("db-0", "data", dbUID, node, "containerd://"+strings.Repeat("d", 64),
				map[string]any{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "sts-db", "controller": true}),
		},
		"/apis/apps/v1/replicasets": {map[string]any{
			"metadata": map[string]any{
				"name": "web-6d8f7c9b5", "namespace": "shop", "uid": "rs-web", "resourceVersion": "5",
				"ownerReferences": []any{map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "dep-web", "controller": true}},
			},
		}},
		"/api/v1/namespaces": {
			map[string]any{"metadata": map[string]any{"name": "shop", "uid": "ns-shop", "resourceVersion": "2"}},
			map[string]any{"metadata": map[string]any{"name": "data", "uid": "ns-data", "resourceVersion": "3"}},
		},
	})

	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	require.NoError(t, os.WriteFile(kubeconfig, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: %s}}]
users: [{name: fake, user: {token: fake-token}}]
contexts: [{name: fake, context: {cluster: fake, user: fake}}]
current-context: fake
`, api.URL), 0o600))

	k8s := deployedProcessor(t, "k8s_attributes")
	k8s["auth_type"] = "kubeConfig"
	// Start only once the pods are listed, so the first span is matched.
	k8s["wait_for_metadata"] = true
	k8s["wait_for_metadata_timeout"] = "20s"

	sink := StartSink(t)
	otlpPort, healthPort := FreePort(t), FreePort(t)
	cfg := map[string]any{
		"receivers": map[string]any{"otlp": map[string]any{"protocols": map[string]any{
			"http": map[string]any{"endpoint": fmt.Sprintf("127.0.0.1:%d", otlpPort)},
		}}},
		"processors": map[string]any{"k8s_attributes": k8s},
		"exporters": map[string]any{"otlp_http": map[string]any{
			"endpoint": sink.Endpoint(), "compression": "none",
			"sending_queue": map[string]any{"enabled": false}, "retry_on_failure": map[string]any{"enabled": false},
		}},
		"extensions": map[string]any{"health_check": map[string]any{"endpoint": fmt.Sprintf("127.0.0.1:%d", healthPort)}},
		"service": map[string]any{
			"extensions": []string{"health_check"},
			"pipelines": map[string]any{"traces": map[string]any{
				"receivers": []string{"otlp"}, "processors": []string{"k8s_attributes"}, "exporters": []string{"otlp_http"},
			}},
			"telemetry": map[string]any{"metrics": map[string]any{"level": "none"}},
		},
	}
	text, err := yaml.Marshal(cfg)
	require.NoError(t, err)
	StartCollectorYAML(t, string(text), []string{"KUBECONFIG=" + kubeconfig, "K8S_NODE_NAME=" + node}, healthPort)

	cases := []struct {
		name     string
		resource map[string]string
		want     map[string]string // nil: no k8s.* attribute may be added
	}{
		{"by container.id", map[string]string{"container.id": containerID},
			map[string]string{"k8s.pod.name": "web-6d8f7c9b5-x2x7k", "k8s.pod.uid": webUID, "k8s.namespace.name": "shop", "k8s.deployment.name": "web", "k8s.container.name": "app"}},
		{"by k8s.pod.uid", map[string]string{"k8s.pod.uid": dbUID},
			map[string]string{"k8s.pod.name": "db-0", "k8s.namespace.name": "data"}},
		{"unknown container.id", map[string]string{"container.id": strings.Repeat("0", 64)}, nil},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spanName := fmt.Sprintf("k8s-case-%d", i)
			postOTLPSpan(t, otlpPort, spanName, c.resource)
			got := sink.WaitForSpans(t, func(s Span) bool { return s.Name == spanName }, 1, spanTimeoutUnprivileged)[0]
			for k, v := range c.want {
				assert.Equal(t, v, str(got.Resource[k]), "%s; resource %v", k, got.Resource)
			}
			if c.want == nil {
				for k := range got.Resource {
					if strings.HasPrefix(k, "k8s.") {
						t.Errorf("unknown container got %s=%v", k, got.Resource[k])
					}
				}
			}
			if _, ok := c.want["k8s.deployment.name"]; !ok && c.want != nil {
				assert.NotContains(t, got.Resource, "k8s.deployment.name", "a StatefulSet's pod has no deployment")
			}
		})
	}

	// rbac.yaml grants all the processor asks for.
	api.mu.Lock()
	assert.Empty(t, api.denied, "requests outside deploy/kubernetes/rbac.yaml")
	api.mu.Unlock()
	// filter.node_from_env_var: the pods are listed for this node only.
	assert.Contains(t, api.queries("/api/v1/pods"), "fieldSelector=spec.nodeName%3D"+node, "pod list/watch queries")
}

// spanTimeoutUnprivileged is how long an OTLP span may take to pass the
// distro (no eBPF batching here).
const spanTimeoutUnprivileged = 10 * time.Second

// deployedProcessor is processors.<name> of the DaemonSet's collector config
// (the config.yaml key of deploy/kubernetes/configmap.yaml).
func deployedProcessor(t *testing.T, name string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(RepoRoot(t), "deploy", "kubernetes", "configmap.yaml"))
	require.NoError(t, err)
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	require.NoError(t, yaml.Unmarshal(b, &cm))
	var cfg struct {
		Processors map[string]map[string]any `yaml:"processors"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg))
	p, ok := cfg.Processors[name]
	require.True(t, ok, "configmap.yaml has no processors.%s", name)
	return p
}

// deployedRBAC is the ClusterRole of deploy/kubernetes/rbac.yaml as a set of
// "group/resource/verb".
func deployedRBAC(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(RepoRoot(t), "deploy", "kubernetes", "rbac.yaml"))
	require.NoError(t, err)
	allowed := map[string]bool{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var doc struct {
			Kind  string `yaml:"kind"`
			Rules []struct {
				APIGroups []string `yaml:"apiGroups"`
				Resources []string `yaml:"resources"`
				Verbs     []string `yaml:"verbs"`
			} `yaml:"rules"`
		}
		if dec.Decode(&doc) != nil {
			break
		}
		if doc.Kind != "ClusterRole" {
			continue
		}
		for _, r := range doc.Rules {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						allowed[g+"/"+res+"/"+v] = true
					}
				}
			}
		}
	}
	require.NotEmpty(t, allowed, "no ClusterRole rules in rbac.yaml")
	return allowed
}

// postOTLPSpan sends one SERVER span named name with resource attributes res
// to the distro's OTLP/HTTP receiver.
func postOTLPSpan(t *testing.T, port int, name string, res map[string]string) {
	t.Helper()
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", "k8s-test")
	for k, v := range res {
		rs.Resource().Attributes().PutStr(k, v)
	}
	sp := rs.ScopeSpans().AppendEmpty().Spans().AppendEmpty()
	sp.SetName(name)
	sp.SetKind(ptrace.SpanKindServer)
	sp.SetTraceID([16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, byte(len(name))})
	sp.SetSpanID([8]byte{1, 2, 3, 4, 5, 6, 7, 8})
	body, err := (&ptrace.ProtoMarshaler{}).MarshalTraces(td)
	require.NoError(t, err)
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/v1/traces", port), "application/x-protobuf", bytes.NewReader(body))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func fakePod(name, ns, uid, node, containerID string, owner map[string]any) map[string]any {
	labels := map[string]any{"app": name}
	if owner["kind"] == "ReplicaSet" {
		// What the Deployment controller sets: the ReplicaSet's name suffix.
		rs := owner["name"].(string)
		labels["pod-template-hash"] = rs[strings.LastIndex(rs, "-")+1:]
	}
	return map[string]any{
		"metadata": map[string]any{
			"name": name, "namespace": ns, "uid": uid, "resourceVersion": "7",
			"ownerReferences": []any{owner}, "labels": labels,
		},
		"spec": map[string]any{"nodeName": node, "containers": []any{map[string]any{"name": "app", "image": "app:1"}}},
		"status": map[string]any{
			"phase": "Running", "podIP": "10.0.0.7",
			"containerStatuses": []any{map[string]any{"name": "app", "containerID": containerID, "image": "app:1", "ready": true}},
		},
	}
}

// fakeKubeAPI serves list and watch of a fixed set of objects per
// collection path, as JSON, the way client-go's informers ask for them.
type fakeKubeAPI struct {
	*httptest.Server
	mu     sync.Mutex
	seq    map[string][]string // path → raw queries seen
	denied []string            // requests the RBAC rules did not allow
}

func newFakeKubeAPI(t *testing.T, allowed map[string]bool, objects map[string][]any) *fakeKubeAPI {
	t.Helper()
	kinds := map[string][2]string{ // path → apiVersion, list kind
		"/api/v1/pods":              {"v1", "PodList"},
		"/api/v1/namespaces":        {"v1", "NamespaceList"},
		"/apis/apps/v1/replicasets": {"apps/v1", "ReplicaSetList"},
	}
	f := &fakeKubeAPI{seq: map[string][]string{}}
	done := make(chan struct{})
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.seq[r.URL.Path] = append(f.seq[r.URL.Path], r.URL.RawQuery)
		f.mu.Unlock()
		q := r.URL.Query()
		verb := "list"
		if q.Get("watch") == "true" || q.Get("watch") == "1" {
			verb = "watch"
		}
		// The path's resource: /api/v1/<r> or /apis/<group>/<v>/<r>.
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
		resource := parts[len(parts)-1]
		group := ""
		if parts[0] == "apis" && len(parts) > 2 {
			group = parts[1]
		}
		if !allowed[group+"/"+resource+"/"+verb] {
			f.mu.Lock()
			f.denied = append(f.denied, verb+" "+r.URL.Path)
			f.mu.Unlock()
			http.Error(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403}`, http.StatusForbidden)
			return
		}
		kind, ok := kinds[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		items := objects[r.URL.Path]
		itemKind := strings.TrimSuffix(kind[1], "List")
		typed := make([]any, len(items))
		for i, it := range items {
			m := map[string]any{"apiVersion": kind[0], "kind": itemKind}
			for k, v := range it.(map[string]any) {
				m[k] = v
			}
			typed[i] = m
		}
		w.Header().Set("Content-Type", "application/json")
		if verb == "list" {
			_ = json.NewEncoder(w).Encode(map[string]any{
				"apiVersion": kind[0], "kind": kind[1],
				"metadata": map[string]any{"resourceVersion": "10"}, "items": typed,
			})
			return
		}
		// A watch: the initial events when asked for (client-go's
		// streaming list), then nothing until the client or test ends.
		enc := json.NewEncoder(w)
		if q.Get("sendInitialEvents") == "true" {
			for _, obj := range typed {
				_ = enc.Encode(map[string]any{"type": "ADDED", "object": obj})
			}
			_ = enc.Encode(map[string]any{"type": "BOOKMARK", "object": map[string]any{
				"apiVersion": kind[0], "kind": itemKind,
				"metadata": map[string]any{"resourceVersion": "10", "annotations": map[string]any{"k8s.io/initial-events-end": "true"}},
			}})
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-done:
		}
	}))
	t.Cleanup(func() {
		close(done)
		f.Server.Close()
	})
	return f
}

// queries joins the raw queries of the requests for path.
func (f *fakeKubeAPI) queries(path string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.seq[path], "\n")
}
