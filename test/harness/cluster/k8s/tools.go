//go:build tools

// Package tools records the binaries this module builds, so that `go mod tidy`
// keeps their dependencies. Build them with `make cluster` (../build.sh).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
