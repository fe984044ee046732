// Package abihost runs the real filters.so under host.c, a C program that plays Envoy's side of the Go HTTP filter ABI, and checks it against filters/envoytest.
package abihost
