// Package proxy is the ztunnel node proxy: it ties the workload state, the identities, HBONE, SOCKS5, the access log and the metrics into the inbound, outbound and admin listeners of one node.
package proxy
