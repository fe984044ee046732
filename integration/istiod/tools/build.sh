#!/usr/bin/env bash
# Builds Istio's control plane (pilot-discovery, the binary istiod runs) at the version the root
# module pins, once per version, into a cache directory, and prints that directory.
#   GOAMBIENT_CACHE   cache root (default ~/.cache/goambient); the binary lands in istio-<version>/
# The version is the root go.mod's istio.io/istio; this module requires the same one
# (integration/istiod checks that they agree). A build takes ~10 CPU-minutes cold.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
want=$(cd ../../.. && go list -m -f '{{.Version}}' istio.io/istio)
istio=$(go list -m -f '{{.Version}}' istio.io/istio)
if [ "$want" != "$istio" ]; then
  echo "integration/istiod/tools requires istio.io/istio $istio, the root module $want: run" >&2
  echo "  (cd integration/istiod/tools && go get istio.io/istio@$want && go mod tidy)" >&2
  exit 1
fi
dir="${GOAMBIENT_CACHE:-$HOME/.cache/goambient}/istio-$istio"
if [ ! -x "$dir/pilot-discovery" ] || [ "$(cat "$dir/VERSION" 2>/dev/null)" != "istio $istio" ]; then
  echo "building pilot-discovery (istio.io/istio $istio) into $dir" >&2
  mkdir -p "$(dirname "$dir")"
  tmp=$(mktemp -d "${dir}.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/" istio.io/istio/pilot/cmd/pilot-discovery
  echo "istio $istio" >"$tmp/VERSION"
  chmod 755 "$tmp"
  rm -rf "$dir" && mv "$tmp" "$dir"
  trap - EXIT
fi
echo "$dir"
