//go:build tools

// Package tools pins the container runtime the local cluster's real node runs: containerd, its
// runc shim and ctr (to import locally built images; there is no registry).
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
