package server

import "github.com/prometheus/client_golang/prometheus"

// metrics use istiod's names where istiod has one.
type metrics struct {
	pushes    *prometheus.CounterVec // pilot_xds_pushes{type}
	nacks     *prometheus.CounterVec // pilot_total_xds_rejects{type}
	clients   prometheus.Gauge       // pilot_xds (connected clients)
	sent      *prometheus.CounterVec // goambient_xds_resources_sent_total{type}
	resources *prometheus.GaugeVec   // goambient_xds_resources{type}
	refused   *prometheus.CounterVec // goambient_xds_refused_total{reason}
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_xds_pushes", Help: "Delta xDS responses sent, by type URL.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilot_total_xds_rejects", Help: "Responses rejected by clients (NACKs), by type URL.",
		}, []string{"type"}),
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pilot_xds", Help: "Connected xDS clients.",
		}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "goambient_xds_resources_sent_total", Help: "Resources sent in delta responses, by type URL.",
		}, []string{"type"}),
		resources: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "goambient_xds_resources", Help: "Resources served, by type URL.",
		}, []string{"type"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "goambient_xds_refused_total", Help: "Connections and ADS streams refused or cut off by a limit or by authentication, by reason.",
		}, []string{"reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.pushes, m.nacks, m.clients, m.sent, m.resources, m.refused} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
