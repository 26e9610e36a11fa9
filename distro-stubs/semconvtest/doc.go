// Package semconvtest stands in for contrib's pkg/semconvtest, which the Go
// module proxy reachable here does not serve at any version. Only the tests
// of k8sattributesprocessor import it; `go mod tidy` (run by ocb) resolves
// the imports of dependencies' tests too, so the package must exist, but
// nothing in the distro builds it. builder-config.yaml replaces the module
// with this directory.
package semconvtest
