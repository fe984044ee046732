package authz

import "github.com/envoyproxy/envoy/contrib/golang/common/go/api"

// The counters the filter defines (Envoy creates them in the filter factory's scope, without
// the HCM's stat prefix). They mirror Envoy RBAC's allowed/denied/shadow_allowed/shadow_denied.
const (
	MetricAllowed       = "goambient_authz.allowed"        // requests allowed
	MetricDenied        = "goambient_authz.denied"         // requests denied (including for a missing config)
	MetricShadowAllowed = "goambient_authz.shadow_allowed" // requests the dry-run policies would allow
	MetricShadowDenied  = "goambient_authz.shadow_denied"  // requests the dry-run policies would deny
)

type metrics struct {
	allowed, denied, shadowAllowed, shadowDenied api.CounterMetric
}

func defineMetrics(cb api.ConfigCallbackHandler) *metrics {
	return &metrics{
		allowed:       cb.DefineCounterMetric(MetricAllowed),
		denied:        cb.DefineCounterMetric(MetricDenied),
		shadowAllowed: cb.DefineCounterMetric(MetricShadowAllowed),
		shadowDenied:  cb.DefineCounterMetric(MetricShadowDenied),
	}
}

func inc(c api.CounterMetric) {
	if c != nil {
		c.Increment(1)
	}
}
