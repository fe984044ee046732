# The Envoy waypoint image: Envoy's contrib build (it has the golang HTTP filter) with
# goambient's filters.so at authzconfig.LibraryPath and the repository's envoy.yaml.
# Not built by `make images` nor in CI: there is no container engine here and no registry to
# pull the base image from. Build it where Docker runs, from the repository root:
#   make filters     # bin/filters.so (cgo, -buildmode=c-shared): build it on a glibc no newer
#                    # than the base image's, or in a container of the same distribution
#   docker build -f manifests/images/waypoint-envoy.Dockerfile -t goambient/waypoint-envoy:dev .
# The base image's entrypoint runs `envoy -c /etc/envoy/envoy.yaml` as its envoy user.
FROM envoyproxy/envoy:contrib-v1.39.0
COPY bin/filters.so /etc/envoy/filters.so
COPY envoy.yaml /etc/envoy/envoy.yaml
