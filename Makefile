# goambient: `make test` is what CI runs (.ci/run); `make bench` reruns the README's figures.
GO ?= go
OPA := $(GO) tool opa

.PHONY: test vet gotest opa-test bench fuzz build clean demo filters crds kube-bins images istiod-bin istiod-peer demo-cluster

test: filters vet gotest opa-test

# filters.so, the Envoy Go filter library every waypoint Envoy loads (see filters/README.md).
filters:
	$(GO) build -buildmode=c-shared -o bin/filters.so ./filters/cmd/filters

vet:
	$(GO) vet ./...

gotest:
	$(GO) test -race -count=1 ./...

# The Rego reference's unit tests, with OPA built from the version pinned in go.mod (a `tool`).
opa-test:
	$(OPA) test -v policies/rego

build: # static binaries: nothing under cmd/ needs cgo (filters.so is built by `make filters`)
	CGO_ENABLED=0 $(GO) build -o bin/ ./cmd/...

# The scenarios of manifests/examples end to end on loopback (xdsserver, two ztunnels,
# the embedded waypoint, the demo apps); SCENARIO=handson|bookinfo-lite|demo-strict|traffic|jwt|egress|gateway-api plays one.
SCENARIO ?= all
demo:
	$(GO) run ./cmd/meshctl demo --scenario $(SCENARIO)

# Benchmarks that compare against a baseline in the same run (see README, Performance).
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./policies/ ./policies/l4/
	$(GO) test -run '^$$' -bench . -benchmem ./filters/authz/
	$(GO) test -run '^$$' -bench . ./filters/abihost/
	$(GO) test -run '^$$' -bench NativeVsOPA -benchtime 5x ./policies/rego/
	$(GO) test -run '^$$' -bench . -benchtime 2s ./ztunnel/proxy/ ./ztunnel/hbone/
	$(GO) test -run '^$$' -bench WaypointVsDirect -benchtime 3s ./filters/embedded/app/
	$(GO) test -run '^$$' -bench Routes100VsOne -benchtime 3s ./filters/embedded/app/
	$(GO) test -run '^$$' -bench GatewayVsDirect -benchtime 3s ./filters/embedded/app/
	$(GO) test -run '^$$' -bench WaypointMetricsOnOff -benchtime 3000x -count 3 ./filters/embedded/app/
	$(GO) test -run '^$$' -bench 'JWTValidation|ExtAuthzOPA' -benchtime 2s -count 3 ./filters/authz/
	$(GO) test -run '^$$' -bench . -benchtime 10000x ./ztunnel/dnsproxy/
	$(GO) test -run '^$$' -bench Select -benchmem ./filters/embedded/router/
	$(GO) test -run '^$$' -bench Translate ./xdsserver/wds/
	$(GO) test -run '^$$' -bench OnePolicyPush -benchtime 30x ./xdsserver/server/

# A short run of every fuzz target; FUZZTIME=5m for longer.
FUZZTIME ?= 20s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzLoad -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./policies
	$(GO) test -run '^$$' -fuzz FuzzEvaluate -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./policies
	$(GO) test -run '^$$' -fuzz FuzzServerFrames -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./ztunnel/hbone
	$(GO) test -run '^$$' -fuzz FuzzClientFrames -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./ztunnel/hbone
	$(GO) test -run '^$$' -fuzz FuzzWorkloadRequest -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./ztunnel/zds
	$(GO) test -run '^$$' -fuzz FuzzParseFDs -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./ztunnel/zds
	$(GO) test -run '^$$' -fuzz FuzzWorkloadAPI -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./ztunnel/xds
	$(GO) test -run '^$$' -fuzz FuzzLoad -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./xdsserver/kubeobj
	$(GO) test -run '^$$' -fuzz FuzzTranslate -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./xdsserver/waypointxds

clean:
	rm -rf bin

# The install bundle's CRDs, copied from the modules at go.mod's versions: Istio's (istio.io/api)
# and Gateway API's standard channel. integration/install_test.go fails when they drift.
crds:
	$(GO) mod download istio.io/api sigs.k8s.io/gateway-api
	rm -rf manifests/install/crds && mkdir -p manifests/install/crds/gateway-api
	install -m 0644 "$$($(GO) list -m -f '{{.Dir}}' istio.io/api)/kubernetes/customresourcedefinitions.gen.yaml" manifests/install/crds/istio.yaml
	install -m 0644 "$$($(GO) list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)"/config/crd/standard/*.yaml manifests/install/crds/gateway-api/

# kube-apiserver, kubectl and etcd for the cluster tests, built once per version into
# $${GOAMBIENT_CACHE:-~/.cache/goambient}/kube-<version>/; the tests find them through
# GOAMBIENT_KUBE_BIN_DIR=<that folder> (.ci/run sets it) and skip without it.
kube-bins:
	integration/kube/tools/build.sh

# Istio's control plane (pilot-discovery) at go.mod's istio.io/istio, built once per version
# into $${GOAMBIENT_CACHE:-~/.cache/goambient}/istio-<version>/ (~11 CPU-minutes cold); the istiod
# peer test finds it through GOAMBIENT_ISTIO_BIN_DIR=<that folder> (.ci/run sets it).
istiod-bin:
	integration/istiod/tools/build.sh

# The istiod peer test alone: goambient's ztunnel under istiod, and xdsserver's workload API
# compared with istiod's for the same objects (integration/kube, TestIstiodPeer).
istiod-peer:
	GOAMBIENT_KUBE_BIN_DIR=$$(integration/kube/tools/build.sh) GOAMBIENT_ISTIO_BIN_DIR=$$(integration/istiod/tools/build.sh) \
		$(GO) test -count=1 -run TestIstiodPeer -v ./integration/kube/

# OCI images (docker-archive tarballs: docker load, kind load image-archive, ctr images import)
# of xdsserver, ztunnel and the embedded waypoint, from the static binaries, without a
# container engine: bin/images/<component>.tar, tagged goambient/<component>:dev. The Envoy
# waypoint image has a Dockerfile (manifests/images/waypoint-envoy.Dockerfile), built elsewhere.
images: build
	$(GO) run ./manifests/images --bin bin --out bin/images

# A real single-node Kubernetes on this machine (integration/node: root, Debian's containerd,
# runc and containernetworking-plugins; kubelet and the rest from the kube-bins cache), the
# install bundle and Istio's istio-cni on it, then the scenarios through real pods with kubectl;
# everything is torn down at the end (GOAMBIENT_NODE_KEEP=1 keeps the logs' folder).
demo-cluster:
	GOAMBIENT_KUBE_BIN_DIR=$$(integration/kube/tools/build.sh) GOAMBIENT_NODE=1 \
		$(GO) test -count=1 -timeout 60m -v ./integration/node/
