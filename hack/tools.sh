#!/usr/bin/env bash
# Builds the Go-built binaries the local control plane and the tests need, from their
# published Go modules, into a per-user cache outside the repo (so fresh clones reuse it), and the
# workers' connect guard library (C, with cc). Each tool is rebuilt only when its versioned folder
# lacks it. Prints the bin folder.
#
#   hack/tools.sh            build what is missing, print the cache's bin folder
#   hack/tools.sh --print    only print the folder
#   hack/tools.sh --connect-guard   only build the connect guard (no Go needed)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../tools/versions.env
. "$root/tools/versions.env"
cache=${FFRTMP_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ffrtmp-tools}
bin="$cache/bin"
if [[ ${1:-} == --print ]]; then echo "$bin"; exit 0; fi
mkdir -p "$bin"
export GOFLAGS="-buildvcs=false -trimpath" CGO_ENABLED=0

log() { echo "[tools] $*" >&2; }

# link NAME DIR: point $bin/NAME at the versioned binary, so PATH needs one folder.
link() { ln -sfn "$2/$1" "$bin/$1"; }

# The connect guard that workers run as local processes preload into ffmpeg (the image builds its own
# copy): one C file, rebuilt when it changes, linked at $cache/lib/connect-guard.so.
guard_src="$root/operator/ffrtmp/egress/connect_guard.c"
guard_dir="$cache/connect-guard-$(sha256sum "$guard_src" | cut -c1-12)"
if [[ ! -f $guard_dir/connect-guard.so ]]; then
  log "building the connect guard"
  mkdir -p "$guard_dir.tmp"
  cc -Wall -Wextra -Werror -O2 -fPIC -shared -o "$guard_dir.tmp/connect-guard.so" "$guard_src"
  rm -rf "$guard_dir"; mv "$guard_dir.tmp" "$guard_dir"
fi
mkdir -p "$cache/lib"
ln -sfn "$guard_dir/connect-guard.so" "$cache/lib/connect-guard.so"
if [[ ${1:-} == --connect-guard ]]; then exit 0; fi

k8s_dir="$cache/kubernetes-$KUBERNETES_VERSION"
k8s_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
missing=0; for c in "${k8s_cmds[@]}"; do [[ -x $k8s_dir/$c ]] || missing=1; done
if (( missing )); then
  log "building Kubernetes $KUBERNETES_VERSION (${k8s_cmds[*]}); cold build takes a while"
  minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$k8s_dir.tmp"
  (cd "$root/tools/k8s" && go build -ldflags "$ldflags" -o "$k8s_dir.tmp/" \
    $(printf 'k8s.io/kubernetes/cmd/%s ' "${k8s_cmds[@]}"))
  rm -rf "$k8s_dir"; mv "$k8s_dir.tmp" "$k8s_dir"
fi
for c in "${k8s_cmds[@]}"; do link "$c" "$k8s_dir"; done

etcd_dir="$cache/etcd-$ETCD_VERSION"
if [[ ! -x $etcd_dir/etcd ]]; then
  log "building etcd $ETCD_VERSION"
  mkdir -p "$etcd_dir.tmp"
  (cd "$root/tools/etcd" && go build -ldflags "-s -w" -o "$etcd_dir.tmp/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$etcd_dir"; mv "$etcd_dir.tmp" "$etcd_dir"
fi
link etcd "$etcd_dir"

# The real node's runtime: containerd with its runc shim and ctr. Static, without the
# snapshotters that need cgo or kernel features (btrfs, devmapper, zfs).
containerd_dir="$cache/containerd-$CONTAINERD_VERSION"
if [[ ! -x $containerd_dir/containerd || ! -x $containerd_dir/containerd-shim-runc-v2 || ! -x $containerd_dir/ctr ]]; then
  log "building containerd $CONTAINERD_VERSION"
  mkdir -p "$containerd_dir.tmp"
  (cd "$root/tools/containerd" && go build -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    -o "$containerd_dir.tmp/" github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/ctr)
  rm -rf "$containerd_dir"; mv "$containerd_dir.tmp" "$containerd_dir"
fi
for c in containerd containerd-shim-runc-v2 ctr; do link "$c" "$containerd_dir"; done

# The real node's cluster DNS: CoreDNS with the few plugins it needs (tools/coredns/main.go).
coredns_dir="$cache/coredns-$COREDNS_VERSION-$(sha256sum "$root/tools/coredns/main.go" | cut -c1-12)"
if [[ ! -x $coredns_dir/coredns ]]; then
  log "building coredns $COREDNS_VERSION"
  mkdir -p "$coredns_dir.tmp"
  (cd "$root/tools/coredns" && go build -ldflags "-s -w" -o "$coredns_dir.tmp/coredns" .)
  rm -rf "$coredns_dir"; mv "$coredns_dir.tmp" "$coredns_dir"
fi
link coredns "$coredns_dir"

# The Pod sandbox's process (the local cluster builds its pause image from it: no registry).
pause_dir="$cache/pause-$(sha256sum "$root/tools/pause/main.go" | cut -c1-12)"
if [[ ! -x $pause_dir/pause ]]; then
  log "building pause"
  mkdir -p "$pause_dir.tmp"
  (cd "$root/tools/pause" && go build -ldflags "-s -w" -o "$pause_dir.tmp/pause" .)
  rm -rf "$pause_dir"; mv "$pause_dir.tmp" "$pause_dir"
fi
link pause "$pause_dir"

# go_install NAME MODULE/PATH VERSION: modules without replace directives install directly.
go_install() {
  local name=$1 pkg=$2 version=$3 dir="$cache/$1-$3"
  if [[ ! -x $dir/$name ]]; then
    log "building $name $version"
    GOBIN="$dir.tmp" go install -ldflags "-s -w" "$pkg@$version"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
  fi
  link "$name" "$dir"
}
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
go_install kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
# A real S3 server for the object-storage tests (tests/s3.py starts it with its POSIX backend).
go_install versitygw github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION"
echo "$bin"
