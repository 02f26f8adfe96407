package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gobps/gobps/cluster"
)

var (
	cNodes      = desc("coordinator_nodes", "Nodes of the role that are active: have the address book and have neither left nor died.", "node_role")
	cExpected   = desc("coordinator_expected_nodes", "Nodes of the role the job has (DMLC_NUM_WORKER × BYTEPS_LOCAL_SIZE workers, DMLC_NUM_SERVER servers).", "node_role")
	cDeaths     = desc("coordinator_deaths_total", "Nodes of the role that died (dropped their connection without leaving, or fell silent for GOBPS_HEARTBEAT_TIMEOUT).", "node_role")
	cDepartures = desc("coordinator_departures_total", "Nodes of the role that left the job in order (every worker at the end of training).", "node_role")
)

// coordinatorCollector exports a coordinator's Stats, read at scrape time.
type coordinatorCollector struct{ c *cluster.Coordinator }

// NewCoordinatorCollector returns the collector of c's metrics.
func NewCoordinatorCollector(c *cluster.Coordinator) prometheus.Collector {
	return coordinatorCollector{c}
}

func (c coordinatorCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{cNodes, cExpected, cDeaths, cDepartures} {
		ch <- d
	}
}

func (c coordinatorCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.c.Stats()
	for _, r := range []struct {
		role               string
		live, expected     int
		deaths, departures uint64
	}{
		{"worker", st.Workers, st.ExpectedWorkers, st.WorkerDeaths, st.WorkerDepartures},
		{"server", st.Servers, st.ExpectedServers, st.ServerDeaths, st.ServerDepartures},
	} {
		gauge(ch, cNodes, float64(r.live), r.role)
		gauge(ch, cExpected, float64(r.expected), r.role)
		counter(ch, cDeaths, float64(r.deaths), r.role)
		counter(ch, cDepartures, float64(r.departures), r.role)
	}
}
