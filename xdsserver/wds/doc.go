// Package wds translates the mesh model into Istio's workload API (istio.workload.Address and istio.security.Authorization), the resources a ztunnel receives.
package wds
