package metrics

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/summation"
)

// PushBytes counts the payload bytes of the pushes a server's transport
// delivers to it (CountPushes): the bytes it sums.
type PushBytes struct{ n atomic.Uint64 }

// Load returns the bytes counted so far (0 for a nil counter).
func (p *PushBytes) Load() uint64 {
	if p == nil {
		return 0
	}
	return p.n.Load()
}

// CountPushes returns a transport that is tr but for the handlers its
// Listen serves, which count the payload bytes of every push delivered
// (Handle without a transport error) before passing it on, and the
// counter. The summation server keeps no byte count of its own; this one
// costs an atomic addition per push frame. With metrics off the caller
// keeps tr and a nil counter.
func CountPushes(tr rdma.Transport) (rdma.Transport, *PushBytes) {
	p := new(PushBytes)
	return countingTransport{Transport: tr, p: p}, p
}

type countingTransport struct {
	rdma.Transport
	p *PushBytes
}

func (t countingTransport) Listen(addr string, h rdma.Handler) (rdma.Listener, error) {
	ch := &countingHandler{Handler: h, p: t.p}
	ch.chunks, _ = h.(rdma.ChunkReceiver)
	ch.stable, _ = h.(rdma.StableReceiver)
	return t.Transport.Listen(addr, ch)
}

// countingHandler passes every call on to the server's handler, including
// the optional ChunkReceiver and StableReceiver (declining, as the
// contract allows, where the server does not implement them).
type countingHandler struct {
	rdma.Handler
	p      *PushBytes
	chunks rdma.ChunkReceiver
	stable rdma.StableReceiver
}

func (h *countingHandler) Handle(c rdma.Conn, hd *proto.Header, payload []byte, err error) {
	if err == nil && hd.Op == proto.OpPush {
		h.p.n.Add(uint64(hd.Length))
	}
	h.Handler.Handle(c, hd, payload, err)
}

func (h *countingHandler) Chunks(c rdma.Conn, hd *proto.Header) (rdma.ChunkSink, bool, error) {
	if h.chunks == nil {
		return nil, false, nil
	}
	return h.chunks.Chunks(c, hd)
}

func (h *countingHandler) StableDest(c rdma.Conn, hd *proto.Header) ([]byte, bool, error) {
	if h.stable == nil {
		return nil, false, nil
	}
	return h.stable.StableDest(c, hd)
}

// serverCollector exports a summation server's Stats, read at scrape time.
type serverCollector struct {
	srv    *summation.Server
	pushed *PushBytes
}

var (
	srvPushes      = desc("server_pushes_total", "Pushes the server accepted (one per worker, or per machine with local aggregation, per key and round).")
	srvPushBytes   = desc("server_push_bytes_total", "Payload bytes of the pushes delivered to the server: the bytes it summed (pushes it then refused, counted in gobps_server_refused_total, included).")
	srvPulls       = desc("server_pulls_total", "Answers the server sent (whole, or the last piece of one): the sums pulled.")
	srvPieces      = desc("server_answer_pieces_total", "Answer pieces the server sent, streamed as each 256 KiB chunk's sum completed.")
	srvRefused     = desc("server_refused_total", "Requests the server answered with an error (undeclared key, wrong size, round outside the window, duplicate, failed round).")
	srvDeclares    = desc("server_declarations_total", "Declaration frames the server accepted (each may declare many keys).")
	srvBadConns    = desc("server_bad_connections_total", "Connections the server closed for a malformed frame.")
	srvNoHello     = desc("server_no_hello_total", "Connections closed because they sent no hello in time (GOBPS_HELLO_TIMEOUT).")
	srvKeys        = desc("server_keys", "Keys declared on the server.")
	srvDeclared    = desc("server_declared_bytes", "Bytes of the keys declared on the server (bounded by GOBPS_SERVER_MEMORY_BYTES).")
	srvEngineBytes = desc("server_engine_declared_bytes", "Bytes of the keys each summation engine owns.", "engine")
)

// NewServerCollector returns the collector of srv's metrics; pushed, from
// CountPushes, supplies gobps_server_push_bytes_total (absent when nil).
func NewServerCollector(srv *summation.Server, pushed *PushBytes) prometheus.Collector {
	return &serverCollector{srv: srv, pushed: pushed}
}

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{srvPushes, srvPulls, srvPieces, srvRefused, srvDeclares, srvBadConns, srvNoHello, srvKeys, srvDeclared, srvEngineBytes} {
		ch <- d
	}
	if c.pushed != nil {
		ch <- srvPushBytes
	}
}

func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.srv.Stats()
	counter(ch, srvPushes, float64(st.Pushes))
	counter(ch, srvPulls, float64(st.Pulls))
	counter(ch, srvPieces, float64(st.Pieces))
	counter(ch, srvRefused, float64(st.Refused))
	counter(ch, srvDeclares, float64(st.Declares))
	counter(ch, srvBadConns, float64(st.BadConns))
	counter(ch, srvNoHello, float64(st.NoHello))
	gauge(ch, srvKeys, float64(st.Keys))
	gauge(ch, srvDeclared, float64(st.Declared))
	for i, b := range st.EngineBytes {
		gauge(ch, srvEngineBytes, float64(b), strconv.Itoa(i))
	}
	if c.pushed != nil {
		counter(ch, srvPushBytes, float64(c.pushed.Load()))
	}
}

// desc is the description of gobps_name, with variable labels.
func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("gobps_"+name, help, labels, nil)
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}
