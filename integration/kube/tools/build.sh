#!/usr/bin/env bash
# Builds the binaries the cluster tests run (kube-apiserver, kubectl, etcd) from this module's
# pinned versions, once per version, into a cache directory, and prints that directory.
#   GOAMBIENT_CACHE   cache root (default ~/.cache/goambient); binaries land in kube-<version>/
# A build takes ~13 CPU-minutes and ~3 GB of memory cold; later calls only check the files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
kube=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
dir="${GOAMBIENT_CACHE:-$HOME/.cache/goambient}/kube-$kube"
bins=(kube-apiserver kubectl etcd)

complete() {
  for b in "${bins[@]}"; do [ -x "$dir/$b" ] || return 1; done
  [ "$(cat "$dir/VERSION" 2>/dev/null)" = "kubernetes $kube etcd $etcd" ]
}
if ! complete; then
  echo "building kube-apiserver and kubectl $kube, etcd $etcd into $dir" >&2
  # kubectl and the API server parse their own version: stamp it as Kubernetes' release does.
  minor=${kube#v*.}; minor=${minor%%.*}; major=${kube#v}; major=${major%%.*}
  ld=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$kube -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  mkdir -p "$(dirname "$dir")"
  tmp=$(mktemp -d "${dir}.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w$ld" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./etcd
  echo "kubernetes $kube etcd $etcd" >"$tmp/VERSION"
  chmod 755 "$tmp"
  rm -rf "$dir" && mv "$tmp" "$dir"
  trap - EXIT
fi
echo "$dir"
