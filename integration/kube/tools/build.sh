#!/usr/bin/env bash
# Builds the binaries the cluster tests run (kube-apiserver, kube-controller-manager, kubectl,
# etcd, and for the real node kubelet, kube-scheduler, kube-proxy) from this module's pinned versions, once per version, into a cache directory, and
# prints that directory. A folder of the same versions that lacks a binary (one added since it
# was built) gets only the missing ones.
#   GOAMBIENT_CACHE   cache root (default ~/.cache/goambient); binaries land in kube-<version>/
# A build takes ~13 CPU-minutes and ~3 GB of memory cold for the first three;
# kube-controller-manager adds ~3 CPU-minutes to a cold build, the node's three (kubelet,
# kube-scheduler, kube-proxy) more (see integration/README.md); builds run under nice -n 10;
# later calls only check the files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
kube=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
dir="${GOAMBIENT_CACHE:-$HOME/.cache/goambient}/kube-$kube"
bins=(kube-apiserver kube-controller-manager kubectl etcd kubelet kube-scheduler kube-proxy)
pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl ./etcd
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy)

same_version() { [ "$(cat "$dir/VERSION" 2>/dev/null)" = "kubernetes $kube etcd $etcd" ]; }
missing=()
if same_version; then
  for i in "${!bins[@]}"; do [ -x "$dir/${bins[$i]}" ] || missing+=("${pkgs[$i]}"); done
else
  missing=("${pkgs[@]}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "building ${missing[*]} ($kube, etcd $etcd) into $dir" >&2
  # kubectl and the API server parse their own version: stamp it as Kubernetes' release does.
  minor=${kube#v*.}; minor=${minor%%.*}; major=${kube#v}; major=${major%%.*}
  ld=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$kube -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  mkdir -p "$(dirname "$dir")"
  tmp=$(mktemp -d "${dir}.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "-s -w$ld" -o "$tmp/" "${missing[@]}"
  if same_version; then # add the missing binaries to the folder
    for b in "$tmp"/*; do mv "$b" "$dir/"; done
  else
    echo "kubernetes $kube etcd $etcd" >"$tmp/VERSION"
    chmod 755 "$tmp"
    rm -rf "$dir" && mv "$tmp" "$dir"
  fi
  rm -rf "$tmp"
  trap - EXIT
fi
echo "$dir"
