package ca

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a request is refused (the reason label of goambient_ca_certificates_refused_total).
const (
	ReasonUnauthenticated = "unauthenticated" // no token, or a token not accepted
	ReasonForbidden       = "forbidden"       // the caller may not have that identity
	ReasonInvalid         = "invalid_request" // bad CSR, identity or lifetime
	ReasonInternal        = "internal"        // signing failed
)

type metrics struct {
	issued  *prometheus.CounterVec
	refused *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "goambient_ca_certificates_issued_total",
			Help: "Certificates issued by the CA, by kind of caller (ztunnel, waypoint, workload).",
		}, []string{"caller"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "goambient_ca_certificates_refused_total",
			Help: "Certificate requests refused by the CA, by reason (unauthenticated, forbidden, invalid_request, internal).",
		}, []string{"reason"}),
	}
	for _, r := range []string{ReasonUnauthenticated, ReasonForbidden, ReasonInvalid, ReasonInternal} {
		m.refused.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.issued, m.refused} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("ca: metrics: %w", err)
		}
	}
	return m, nil
}
