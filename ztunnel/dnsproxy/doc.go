// Package dnsproxy is the ztunnel's DNS: a proxy that answers workloads' queries for mesh services and ServiceEntry hosts from the workload state and forwards the rest to the node's resolvers, and a caching resolver for hostname workloads.
package dnsproxy
