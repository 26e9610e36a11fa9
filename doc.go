// metadata.yaml is the source of truth for internal/metadata,
// internal/metadatatest, documentation.md and the generated_*_test.go files;
// regenerate them with `make mdatagen` (mdatagen v0.159.0, pinned in
// tools/go.mod):
//
//go:generate go tool -modfile=tools/go.mod mdatagen metadata.yaml
//
// mdatagen names the package of the root test files after the directory, so
// set it explicitly (the checkout may live in any folder):
//
//go:generate sed -i "s/^package .*/package ebpftracingreceiver/" generated_component_test.go generated_package_test.go

// Package ebpftracingreceiver is the importable entry point of the
// ebpf_tracing receiver: it holds metadata.yaml, the mdatagen output, and a
// NewFactory that forwards to the implementation in the receiver
// subpackage. The OpenTelemetry Collector Builder (ocb) imports this package.
//
// The receiver traces HTTP servers and clients with eBPF and emits the
// requests as spans; it runs on linux only.
package ebpftracingreceiver // import "github.com/ebpftracing/ebpftracingreceiver"
