package meshgraph

import (
	"fmt"
	"time"
)

// The PromQL queries Kiali's graph issues for one namespace, built as Kiali builds them in
// graph/telemetry/istio/istio.go (buildNamespaceTrafficMap: requests queries 0–3, TCP queries
// 0–2) and graph/telemetry/istio/appender/security_policy.go (the mTLS query), of
// github.com/kiali/kiali at commit d733a096e02e (2026-08-20, v2.31.0-SNAPSHOT), with the
// graph page's defaults for an ambient namespace: HTTP rate "requests", TCP rate "sent",
// ambient traffic "total" (util.GetReporter: reporter=~"waypoint|<reporter>"; util.GetApp: no
// app filter), idle edges hidden ("> 0").

// KialiSource names where the queries come from.
const KialiSource = "github.com/kiali/kiali@d733a096e02e (v2.31.0-SNAPSHOT): graph/telemetry/istio/istio.go, graph/telemetry/istio/appender/security_policy.go"

const (
	requestsGroupBy = "source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags"
	tcpGroupBy      = "app,source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,response_flags"
	securityGroupBy = "source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,source_principal,destination_cluster,destination_service_namespace,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,destination_principal,connection_security_policy"
)

// Query is one PromQL query of Kiali's graph and what it is for.
type Query struct {
	Kind   string // "requests", "tcp" or "security"
	What   string // Kiali's comment for it
	PromQL string
}

// reporter is util.GetReporter with ambient traffic "total".
func reporter(r string) string { return fmt.Sprintf(`reporter=~"waypoint|%s"`, r) }

// KialiQueries are the queries Kiali's graph page issues for namespace ns over window.
func KialiQueries(ns string, window time.Duration) []Query {
	secs := int(window.Seconds())
	idle := "> 0"
	var q []Query
	metric := "istio_requests_total"
	q = append(q,
		Query{"requests", "0) Incoming: source telemetry, unserviced namespace services' incoming traffic",
			fmt.Sprintf(`sum(rate(%s{%s,source_workload_namespace!="%s",destination_workload_namespace="unknown",destination_workload="unknown",destination_service=~"^.+\\.%s\\..+$"} [%vs])) by (%s) %s`,
				metric, reporter("source"), ns, ns, secs, requestsGroupBy, idle)},
		Query{"requests", "1) Incoming, ambient: source telemetry from outside the namespace",
			fmt.Sprintf(`sum(rate(%s{reporter="source",source_workload_namespace!="%s",destination_workload_namespace="%s"} [%vs])) by (%s) %s`,
				metric, ns, ns, secs, requestsGroupBy, idle)},
		Query{"requests", "2) Incoming: destination telemetry",
			fmt.Sprintf(`sum(rate(%s{%s,destination_workload_namespace="%s"} [%vs])) by (%s) %s`,
				metric, reporter("destination"), ns, secs, requestsGroupBy, idle)},
		Query{"requests", "3) Outgoing: source telemetry",
			fmt.Sprintf(`sum(rate(%s{%s,source_workload_namespace="%s"} [%vs])) by (%s) %s`,
				metric, reporter("source"), ns, secs, requestsGroupBy, idle)},
	)
	tcp := "istio_tcp_received_bytes_total" // TCP rate "sent": Kiali reads the request bytes (istio/istio#32399)
	q = append(q,
		Query{"tcp", "0) Incoming: source telemetry, unserviced namespace services' incoming traffic",
			fmt.Sprintf(`sum(rate(%s{%s,source_workload_namespace!="%s",destination_workload_namespace="unknown",destination_workload="unknown",destination_service=~"^.+\\.%s\\..+$"} [%vs])) by (%s) %s`,
				tcp, reporter("source"), ns, ns, secs, tcpGroupBy, idle)},
		Query{"tcp", "1) Incoming: destination telemetry",
			fmt.Sprintf(`sum(rate(%s{%s,destination_workload_namespace="%s"} [%vs])) by (%s) %s`,
				tcp, reporter("destination"), ns, secs, tcpGroupBy, idle)},
		Query{"tcp", "2) Outgoing: source telemetry",
			fmt.Sprintf(`sum(rate(%s{%s,source_workload_namespace="%s"} [%vs])) by (%s) %s`,
				tcp, reporter("source"), ns, secs, tcpGroupBy, idle)},
	)
	// The security policy appender: requests (HTTP rate "requests") and TCP sent, incoming
	// from outside the namespace then inside it, destination telemetry.
	q = append(q,
		Query{"security", "1) requests and TCP from outside the namespace",
			fmt.Sprintf(`(sum(rate(%s{%s,source_workload_namespace!="%v",destination_service_namespace="%v"}[%vs])) by (%s) > 0) OR (sum(rate(%s{%s,source_workload_namespace!="%v",destination_service_namespace="%v"}[%vs])) by (%s) > 0)`,
				metric, reporter("destination"), ns, ns, secs, securityGroupBy,
				"istio_tcp_sent_bytes_total", reporter("destination"), ns, ns, secs, securityGroupBy)},
		Query{"security", "2) requests and TCP within the namespace",
			fmt.Sprintf(`(sum(rate(%s{%s,source_workload_namespace="%v"}[%vs])) by (%s) > 0) OR (sum(rate(%s{%s,source_workload_namespace="%v"}[%vs])) by (%s) > 0)`,
				metric, reporter("destination"), ns, secs, securityGroupBy,
				"istio_tcp_sent_bytes_total", reporter("destination"), ns, secs, securityGroupBy)},
	)
	return q
}
