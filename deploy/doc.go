// Package deploy holds the container image and Kubernetes manifests of the
// otelcol-ebpf distro (Dockerfile, kubernetes/) and the test that checks
// them: the DaemonSet settings eBPF tracing and context propagation need, and
// the ConfigMap's collector config, validated by the built distro when
// _build/otelcol-ebpf exists. See the Kubernetes section of the repository README.
package deploy
