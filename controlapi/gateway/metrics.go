package gateway

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/seed4c/moat/dataplane"
)

// metrics exposes the gateway to Prometheus: the fast path's counters (read from its
// maps at scrape time), backend states, reconciliation, attestation and API requests.
type metrics struct {
	g        *Gateway
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newMetrics(g *Gateway) *metrics {
	m := &metrics{g: g, reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_api_requests_total", Help: "REST API requests by route and status code.",
	}, []string{"route", "code"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "moat_api_request_duration_seconds", Help: "REST API request duration.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	}, []string{"route"})
	m.reg.MustRegister(m.requests, m.latency, m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observeRequest(route string, code int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.latency.WithLabelValues(route).Observe(d.Seconds())
}

func (m *metrics) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return mux
}

var (
	descPackets     = prometheus.NewDesc("moat_packets_total", "Packets dropped or passed by the fast path, by reason.", []string{"reason"}, nil)
	descTenant      = prometheus.NewDesc("moat_tenant_packets_total", "Packets per tenant: rx (classified), fwd (forwarded), dropped.", []string{"tenant", "direction"}, nil)
	descTenantBytes = prometheus.NewDesc("moat_tenant_bytes_total", "Bytes per tenant.", []string{"tenant", "direction"}, nil)
	descBackend     = prometheus.NewDesc("moat_backend_packets_total", "Packets per backend: fwd (to it), reply (from it).", []string{"tenant", "service", "backend", "direction"}, nil)
	descNewFlows    = prometheus.NewDesc("moat_backend_new_flows_total", "Flows balanced to each backend.", []string{"tenant", "service", "backend"}, nil)
	descEvents      = prometheus.NewDesc("moat_flow_events_total", "Flow events emitted or lost.", []string{"outcome"}, nil)
	descStates      = prometheus.NewDesc("moat_backends", "Backends by admission state.", []string{"state"}, nil)
	descPasses      = prometheus.NewDesc("moat_reconcile_passes_total", "Reconciliation passes applied.", nil, nil)
	descFailures    = prometheus.NewDesc("moat_reconcile_failures_total", "Reconciliation passes that failed.", nil, nil)
	descLatency     = prometheus.NewDesc("moat_reconcile_result_to_applied_seconds", "Last delay from an attestation result's arrival to the write of the configuration that follows from it.", nil, nil)
	descEviction    = prometheus.NewDesc("moat_reconcile_result_to_evicted_seconds", "Last delay from a failed attestation result's arrival to the eviction of the backends it admitted.", nil, nil)
	descResults     = prometheus.NewDesc("moat_attestation_results_total", "Attestation results issued by the verifier, by status.", []string{"status"}, nil)
)

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descTenant, descTenantBytes, descBackend, descNewFlows, descEvents,
		descStates, descPasses, descFailures, descLatency, descEviction, descResults} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	g := m.g
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	if c, err := g.DP.Counters(); err == nil {
		for r, t := range c.Reasons {
			if dataplane.Reason(r) != dataplane.ReasonNone {
				counter(descPackets, t.Packets, dataplane.Reason(r).String())
			}
		}
		ids, _ := g.State.LoadIDs()
		tenants := invert(ids.Tenants)
		backends := invert(ids.Backends)
		for id, t := range c.Tenants {
			name := tenants[id]
			if name == "" {
				continue
			}
			for dir, v := range map[string]dataplane.Traffic{"rx": t.RX, "fwd": t.Fwd, "dropped": t.Dropped} {
				counter(descTenant, v.Packets, name, dir)
				counter(descTenantBytes, v.Bytes, name, dir)
			}
		}
		for id, b := range c.Backends {
			parts := strings.SplitN(backends[id], "/", 3)
			if len(parts) != 3 {
				continue
			}
			counter(descBackend, b.Fwd.Packets, parts[0], parts[1], parts[2], "fwd")
			counter(descBackend, b.Reply.Packets, parts[0], parts[1], parts[2], "reply")
			counter(descNewFlows, b.NewFlows, parts[0], parts[1], parts[2])
		}
		counter(descEvents, c.Events.Emitted, "emitted")
		counter(descEvents, c.Events.RateLimited, "rate_limited")
		counter(descEvents, c.Events.RingbufFull, "ringbuf_full")
	}
	rs := g.Rec.Stats()
	for st, n := range rs.ByState {
		ch <- prometheus.MustNewConstMetric(descStates, prometheus.GaugeValue, float64(n), string(st))
	}
	counter(descPasses, rs.Passes)
	counter(descFailures, rs.Failures)
	ch <- prometheus.MustNewConstMetric(descLatency, prometheus.GaugeValue, rs.LastLatency.Seconds())
	ch <- prometheus.MustNewConstMetric(descEviction, prometheus.GaugeValue, rs.LastEviction.Seconds())
	vs := g.Verifier.Stats()
	for status, n := range map[string]uint64{"affirming": vs.Affirming, "contraindicated": vs.Contraindicated, "refused": vs.Refused, "expired": vs.Expired} {
		counter(descResults, n, status)
	}
}

func invert(m map[string]uint32) map[uint32]string {
	out := make(map[uint32]string, len(m))
	for k, v := range m {
		out[v] = k
	}
	return out
}
