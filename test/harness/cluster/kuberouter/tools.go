//go:build tools

// Package tools records the binary this module builds, so that `go mod tidy`
// keeps its dependencies. Build it with `make cluster` (../build.sh).
package tools

import (
	_ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)
