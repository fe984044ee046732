// Package hbone implements HBONE, Istio ambient's tunnel of TCP connections through HTTP/2 CONNECT over mutual TLS 1.3 with SPIFFE identities: a pooled client, a server, and a half-close-aware relay.
package hbone
