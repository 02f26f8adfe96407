package config

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// base returns the smallest valid environment: the required variables only.
func base() map[string]string {
	return map[string]string{
		"DMLC_ROLE":         "worker",
		"DMLC_NUM_WORKER":   "2",
		"DMLC_NUM_SERVER":   "3",
		"DMLC_PS_ROOT_URI":  "10.0.0.1",
		"DMLC_PS_ROOT_PORT": "9000",
	}
}

// with returns base() with the given NAME=value pairs applied; a pair with
// no "=" deletes the variable.
func with(kv ...string) map[string]string {
	env := base()
	for _, s := range kv {
		name, value, ok := strings.Cut(s, "=")
		if !ok {
			delete(env, name)
			continue
		}
		env[name] = value
	}
	return env
}

func lookup(env map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	}
}

func parse(env map[string]string) (*Config, error) { return Parse(lookup(env)) }

// wantDefaults is what Parse(base()) must give.
func wantDefaults() Config {
	return Config{
		Role:              Worker,
		NumWorker:         2,
		NumServer:         3,
		RootURI:           "10.0.0.1",
		RootPort:          9000,
		WorkerID:          -1,
		ServerID:          -1,
		LocalRank:         0,
		LocalSize:         1,
		PartitionBytes:    4 << 20,
		SchedulingCredit:  16 << 20,
		EngineThreads:     4,
		TraceDir:          "./trace",
		LogLevel:          "WARNING",
		LogFormat:         LogConsole,
		HeartbeatInterval: time.Second,
		HeartbeatTimeout:  5 * time.Second,
		Lanes:             2,
		HelloTimeout:      10 * time.Second,
		DeclareWarn:       10 * time.Second,
		StallWarning:      60 * time.Second,
		LocalAggregation:  true,
		GPU:               "auto",
		GPUTimeout:        time.Minute,
		RDMAGIDIndex:      -1,
		RDMASendDepth:     128,
		RDMARecvDepth:     64,
		RDMAMRCacheBytes:  4 << 30,
	}
}

func TestDefaults(t *testing.T) {
	c, err := parse(base())
	if err != nil {
		t.Fatal(err)
	}
	if want := wantDefaults(); *c != want {
		t.Errorf("Parse(required only)\n got %+v\nwant %+v", *c, want)
	}
	if got := c.NumWorkerProcs(); got != 2 {
		t.Errorf("NumWorkerProcs = %d, want 2", got)
	}
	c.LocalSize = 4
	if got := c.PushesPerRound(); got != 2 {
		t.Errorf("PushesPerRound with local aggregation = %d, want 2 (one per machine)", got)
	}
	c.LocalAggregation = false
	if got := c.PushesPerRound(); got != 8 {
		t.Errorf("PushesPerRound without local aggregation = %d, want 8 (one per process)", got)
	}
	if got := c.RootAddr(); got != "10.0.0.1:9000" {
		t.Errorf("RootAddr = %q", got)
	}
}

// TestDefaultsMatchTable: setting every variable to the Default that
// Variables advertises changes nothing.
func TestDefaultsMatchTable(t *testing.T) {
	env := base()
	for _, v := range Variables() {
		if v.Default != "" {
			env[v.Name] = v.Default
		}
	}
	c, err := parse(env)
	if err != nil {
		t.Fatal(err)
	}
	if want := wantDefaults(); *c != want {
		t.Errorf("Parse(every default written out)\n got %+v\nwant %+v", *c, want)
	}
}

func TestRequired(t *testing.T) {
	tests := []struct {
		desc string
		env  map[string]string
		want []string // variables the error must say are required
	}{
		{"no DMLC_ROLE", with("DMLC_ROLE"), []string{"DMLC_ROLE"}},
		{"no DMLC_NUM_WORKER", with("DMLC_NUM_WORKER"), []string{"DMLC_NUM_WORKER"}},
		{"no DMLC_NUM_SERVER", with("DMLC_NUM_SERVER"), []string{"DMLC_NUM_SERVER"}},
		{"no DMLC_PS_ROOT_URI", with("DMLC_PS_ROOT_URI"), []string{"DMLC_PS_ROOT_URI"}},
		{"no DMLC_PS_ROOT_PORT", with("DMLC_PS_ROOT_PORT"), []string{"DMLC_PS_ROOT_PORT"}},
		{"empty value counts as unset", with("DMLC_NUM_WORKER="), []string{"DMLC_NUM_WORKER"}},
		{"blank value counts as unset", with("DMLC_ROLE= \t"), []string{"DMLC_ROLE"}},
		{"empty environment", map[string]string{},
			[]string{"DMLC_ROLE", "DMLC_NUM_WORKER", "DMLC_NUM_SERVER", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT"}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := parse(tt.env)
			if err == nil {
				t.Fatalf("no error; got %+v", c)
			}
			if c != nil {
				t.Errorf("Config %+v returned with an error", c)
			}
			for _, name := range tt.want {
				if want := "config: " + name + " is required ("; !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if n := len(unjoin(err)); n != len(tt.want) {
				t.Errorf("%d errors, want %d:\n%v", n, len(tt.want), err)
			}
		})
	}
	if _, err := Parse(nil); err == nil {
		t.Error("Parse(nil) gave no error")
	}
}

// TestBadValues: each malformed or out-of-range value gives exactly one
// error, which names the variable and quotes the value as written.
func TestBadValues(t *testing.T) {
	tests := []struct {
		desc, name, value string
		want              string // part of the message
	}{
		{"role unknown", "DMLC_ROLE", "joint", "must be scheduler, server or worker"},
		{"num worker not integer", "DMLC_NUM_WORKER", "two", "not an integer"},
		{"num worker float", "DMLC_NUM_WORKER", "2.0", "not an integer"},
		{"num worker zero", "DMLC_NUM_WORKER", "0", "between 1 and"},
		{"num worker negative", "DMLC_NUM_WORKER", "-1", "between 1 and"},
		{"num worker huge", "DMLC_NUM_WORKER", "99999999999999999999", "out of range"},
		{"num server not integer", "DMLC_NUM_SERVER", "1x", "not an integer"},
		{"num server zero", "DMLC_NUM_SERVER", "0", "between 1 and"},
		{"root uri with port", "DMLC_PS_ROOT_URI", "10.0.0.1:9000", "without a port"},
		{"root uri with scheme", "DMLC_PS_ROOT_URI", "tcp://host", "without a port"},
		{"root uri bracketed", "DMLC_PS_ROOT_URI", "[::1]", "without a port"},
		{"root uri with space", "DMLC_PS_ROOT_URI", "a b", "white space"},
		{"root port not integer", "DMLC_PS_ROOT_PORT", "abc", "not an integer"},
		{"root port zero", "DMLC_PS_ROOT_PORT", "0", "between 1 and 65535"},
		{"root port too big", "DMLC_PS_ROOT_PORT", "65536", "between 1 and 65535"},
		{"worker id not integer", "DMLC_WORKER_ID", "w0", "not an integer"},
		{"worker id negative", "DMLC_WORKER_ID", "-1", "at least 0"},
		{"worker id = num worker", "DMLC_WORKER_ID", "2", "less than DMLC_NUM_WORKER (2)"},
		{"server id negative", "GOBPS_SERVER_ID", "-1", "at least 0"},
		{"server id = num server", "GOBPS_SERVER_ID", "3", "less than DMLC_NUM_SERVER (3)"},
		{"node host with port", "DMLC_NODE_HOST", "h:1", "without a port"},
		{"local rank not integer", "BYTEPS_LOCAL_RANK", "first", "not an integer"},
		{"local rank negative", "BYTEPS_LOCAL_RANK", "-1", "must not be negative"},
		{"local rank = local size", "BYTEPS_LOCAL_RANK", "1", "less than BYTEPS_LOCAL_SIZE (1)"},
		{"local size not integer", "BYTEPS_LOCAL_SIZE", "8 GPUs", "not an integer"},
		{"local size zero", "BYTEPS_LOCAL_SIZE", "0", "between 1 and"},
		{"too many worker processes", "BYTEPS_LOCAL_SIZE", "1000000", "worker processes, more than"},
		{"partition not integer", "BYTEPS_PARTITION_BYTES", "4MiB", "not an integer"},
		{"partition zero", "BYTEPS_PARTITION_BYTES", "0", "at least 4096"},
		{"partition negative", "BYTEPS_PARTITION_BYTES", "-4096", "at least 4096"},
		{"partition above frame limit", "BYTEPS_PARTITION_BYTES", "2147483648", "at most 1073741824"},
		{"credit not integer", "BYTEPS_SCHEDULING_CREDIT", "lots", "not an integer"},
		{"credit negative", "BYTEPS_SCHEDULING_CREDIT", "-1", "must not be negative"},
		{"credit bytes below a partition", "BYTEPS_SCHEDULING_CREDIT", "65", "less than one partition"},
		{"engine threads not integer", "BYTEPS_SERVER_ENGINE_THREAD", "four", "not an integer"},
		{"engine threads zero", "BYTEPS_SERVER_ENGINE_THREAD", "0", "between 1 and 1024"},
		{"engine threads too many", "BYTEPS_SERVER_ENGINE_THREAD", "1025", "between 1 and 1024"},
		{"async not boolean", "BYTEPS_ENABLE_ASYNC", "yes", "not a boolean"},
		{"async on", "BYTEPS_ENABLE_ASYNC", "1", "asynchronous mode is not implemented yet"},
		{"trace on not boolean", "BYTEPS_TRACE_ON", "2", "not a boolean"},
		{"trace on t", "BYTEPS_TRACE_ON", "t", "not a boolean"},
		{"log level unknown", "BYTEPS_LOG_LEVEL", "verbose", "must be one of TRACE, DEBUG, INFO, WARNING, ERROR, FATAL"},
		{"log level WARN", "BYTEPS_LOG_LEVEL", "warn", "must be one of"},
		{"interval not duration", "GOBPS_HEARTBEAT_INTERVAL", "1 s", "not a duration"},
		{"interval unit only", "GOBPS_HEARTBEAT_INTERVAL", "ms", "not a duration"},
		{"interval NaN", "GOBPS_HEARTBEAT_INTERVAL", "NaN", "not a duration"},
		{"interval Inf", "GOBPS_HEARTBEAT_INTERVAL", "+Inf", "not a duration"},
		{"interval huge seconds", "GOBPS_HEARTBEAT_INTERVAL", "1e300", "out of range"},
		{"interval zero", "GOBPS_HEARTBEAT_INTERVAL", "0", "must be positive"},
		{"interval negative", "GOBPS_HEARTBEAT_INTERVAL", "-1s", "must be positive"},
		{"timeout not duration", "GOBPS_HEARTBEAT_TIMEOUT", "5sec", "not a duration"},
		{"timeout zero seconds", "GOBPS_HEARTBEAT_TIMEOUT", "0.0", "must be positive"},
		{"timeout equal to interval", "GOBPS_HEARTBEAT_TIMEOUT", "1s", "longer than GOBPS_HEARTBEAT_INTERVAL (1s)"},
		{"timeout below interval", "GOBPS_HEARTBEAT_TIMEOUT", "0.5", "longer than GOBPS_HEARTBEAT_INTERVAL"},
		{"lanes not integer", "GOBPS_TCP_LANES", "2.5", "not an integer"},
		{"lanes zero", "GOBPS_TCP_LANES", "0", "between 1 and 64"},
		{"lanes too many", "GOBPS_TCP_LANES", "65", "between 1 and 64"},
		{"checksum not boolean", "GOBPS_CHECKSUM", "on", "not a boolean"},
		{"server port not integer", "GOBPS_SERVER_PORT", "http", "not an integer"},
		{"server port negative", "GOBPS_SERVER_PORT", "-1", "between 0 and 65535"},
		{"server port too big", "GOBPS_SERVER_PORT", "70000", "between 0 and 65535"},
		{"enable rdma not a switch", "BYTEPS_ENABLE_RDMA", "yes", "must be 1 (require RDMA) or 0 (use TCP)"},
		{"enable rdma 2", "BYTEPS_ENABLE_RDMA", "2", "must be 1 (require RDMA) or 0"},
		{"dmlc rdma unknown transport", "DMLC_ENABLE_RDMA", "ucx", "ibverbs is the only RDMA transport"},
		{"rdma device with a path", "GOBPS_RDMA_DEVICE", "/dev/infiniband/uverbs0", "must be a device name"},
		{"metrics address without a port", "GOBPS_METRICS_ADDR", "127.0.0.1", "must be host:port"},
		{"metrics port not a number", "GOBPS_METRICS_ADDR", ":http", "port must be a number from 0 to 65535"},
		{"metrics port too big", "GOBPS_METRICS_ADDR", ":70000", "port must be a number from 0 to 65535"},
		{"gid index not integer", "GOBPS_RDMA_GID_INDEX", "first", "not an integer"},
		{"gid index negative", "GOBPS_RDMA_GID_INDEX", "-1", "at least 0, or auto"},
		{"gid index too big", "GOBPS_RDMA_GID_INDEX", "256", "at most 255"},
		{"send depth zero", "GOBPS_RDMA_SEND_DEPTH", "0", "between 1 and 4096"},
		{"send depth too big", "GOBPS_RDMA_SEND_DEPTH", "4097", "between 1 and 4096"},
		{"recv depth not integer", "GOBPS_RDMA_RECV_DEPTH", "lots", "not an integer"},
		{"recv depth zero", "GOBPS_RDMA_RECV_DEPTH", "0", "between 1 and 4096"},
		{"mr cache tiny", "GOBPS_RDMA_MR_CACHE_BYTES", "4096", "at least 1048576"},
		{"mr cache with unit", "GOBPS_RDMA_MR_CACHE_BYTES", "4GiB", "not an integer"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := parse(with(tt.name + "=" + tt.value))
			if err == nil {
				t.Fatalf("%s=%q accepted: %+v", tt.name, tt.value, c)
			}
			if c != nil {
				t.Errorf("Config %+v returned with an error", c)
			}
			errs := unjoin(err)
			if len(errs) != 1 {
				t.Errorf("%d errors, want 1:\n%v", len(errs), err)
			}
			msg := errs[0].Error()
			prefix := "config: " + tt.name + "=\"" + tt.value + "\": "
			if !strings.HasPrefix(msg, prefix) || !strings.Contains(msg, tt.want) {
				t.Errorf("error %q, want prefix %q and %q", msg, prefix, tt.want)
			}
		})
	}
}

// TestGoodValues: accepted spellings and what they parse to.
func TestGoodValues(t *testing.T) {
	tests := []struct {
		desc  string
		env   map[string]string
		check func(*Config) bool
	}{
		{"role case-insensitive", with("DMLC_ROLE=Server"), func(c *Config) bool { return c.Role == Server }},
		{"role scheduler", with("DMLC_ROLE=scheduler"), func(c *Config) bool { return c.Role == Scheduler }},
		{"values trimmed", with("DMLC_NUM_WORKER= 4\n", "DMLC_PS_ROOT_URI= host "),
			func(c *Config) bool { return c.NumWorker == 4 && c.RootURI == "host" }},
		{"root uri IPv6", with("DMLC_PS_ROOT_URI=fe80::1"), func(c *Config) bool { return c.RootAddr() == "[fe80::1]:9000" }},
		{"worker id set", with("DMLC_WORKER_ID=1"), func(c *Config) bool { return c.WorkerID == 1 }},
		{"worker id empty is unset", with("DMLC_WORKER_ID="), func(c *Config) bool { return c.WorkerID == -1 }},
		{"local rank and size", with("BYTEPS_LOCAL_RANK=7", "BYTEPS_LOCAL_SIZE=8"),
			func(c *Config) bool { return c.LocalRank == 7 && c.NumWorkerProcs() == 16 }},
		{"bool TRUE", with("BYTEPS_TRACE_ON=TRUE"), func(c *Config) bool { return c.TraceOn }},
		{"bool 1", with("GOBPS_CHECKSUM=1"), func(c *Config) bool { return c.Checksum }},
		{"bool False", with("GOBPS_CHECKSUM=False"), func(c *Config) bool { return !c.Checksum }},
		{"async false", with("BYTEPS_ENABLE_ASYNC=false"), func(c *Config) bool { return !c.Async }},
		{"log level lower-case", with("BYTEPS_LOG_LEVEL=debug"), func(c *Config) bool { return c.LogLevel == "DEBUG" }},
		{"log format upper-case", with("GOBPS_LOG_FORMAT=JSON"), func(c *Config) bool { return c.LogFormat == LogJSON }},
		{"duration Go syntax", with("GOBPS_HEARTBEAT_INTERVAL=500ms"),
			func(c *Config) bool { return c.HeartbeatInterval == 500*time.Millisecond }},
		{"duration compound", with("GOBPS_HEARTBEAT_TIMEOUT=1m30s"),
			func(c *Config) bool { return c.HeartbeatTimeout == 90*time.Second }},
		{"duration integer seconds", with("GOBPS_HEARTBEAT_TIMEOUT=10"),
			func(c *Config) bool { return c.HeartbeatTimeout == 10*time.Second }},
		{"duration fractional seconds", with("GOBPS_HEARTBEAT_INTERVAL=0.3"),
			func(c *Config) bool { return c.HeartbeatInterval == 300*time.Millisecond }},
		{"duration exponent seconds", with("GOBPS_HEARTBEAT_INTERVAL=2e-3"),
			func(c *Config) bool { return c.HeartbeatInterval == 2*time.Millisecond }},
		{"engine threads", with("BYTEPS_SERVER_ENGINE_THREAD=16"), func(c *Config) bool { return c.EngineThreads == 16 }},
		{"lanes", with("GOBPS_TCP_LANES=64"), func(c *Config) bool { return c.Lanes == 64 }},
		{"server port", with("GOBPS_SERVER_PORT=65535"), func(c *Config) bool { return c.ServerPort == 65535 }},
		{"trace dir", with("BYTEPS_TRACE_DIR=/tmp/t"), func(c *Config) bool { return c.TraceDir == "/tmp/t" }},
		{"interface and node host", with("DMLC_INTERFACE=eth0", "DMLC_NODE_HOST=node-1.example"),
			func(c *Config) bool { return c.Interface == "eth0" && c.NodeHost == "node-1.example" }},
		{"rdma auto by default", base(), func(c *Config) bool { return c.RDMAMode() == "auto" }},
		{"rdma forced", with("BYTEPS_ENABLE_RDMA=1"), func(c *Config) bool { return c.RDMAMode() == "force" }},
		{"rdma forced, true", with("BYTEPS_ENABLE_RDMA=True"), func(c *Config) bool { return c.EnableRDMA == "1" && c.RDMAMode() == "force" }},
		{"rdma off", with("BYTEPS_ENABLE_RDMA=0"), func(c *Config) bool { return c.RDMAMode() == "off" }},
		{"rdma off, false", with("BYTEPS_ENABLE_RDMA=false"), func(c *Config) bool { return c.EnableRDMA == "0" }},
		{"ps-lite ibverbs", with("DMLC_ENABLE_RDMA=ibverbs"), func(c *Config) bool { return c.RDMAMode() == "force" }},
		{"ps-lite IBVERBS", with("DMLC_ENABLE_RDMA=IBVerbs"), func(c *Config) bool { return c.DMLCEnableRDMA == "ibverbs" }},
		{"ps-lite 1", with("DMLC_ENABLE_RDMA=1"), func(c *Config) bool { return c.RDMAMode() == "force" }},
		{"ps-lite 0 changes nothing", with("DMLC_ENABLE_RDMA=0"), func(c *Config) bool { return c.RDMAMode() == "auto" }},
		{"both force", with("BYTEPS_ENABLE_RDMA=1", "DMLC_ENABLE_RDMA=ibverbs"), func(c *Config) bool { return c.RDMAMode() == "force" }},
		{"bytePS off, ps-lite 0", with("BYTEPS_ENABLE_RDMA=0", "DMLC_ENABLE_RDMA=0"), func(c *Config) bool { return c.RDMAMode() == "off" }},
		{"rdma device", with("GOBPS_RDMA_DEVICE=mlx5_1"), func(c *Config) bool { return c.RDMADevice == "mlx5_1" }},
		{"metrics address", with("GOBPS_METRICS_ADDR=:9100"), func(c *Config) bool { return c.MetricsAddr == ":9100" }},
		{"metrics off", with(), func(c *Config) bool { return c.MetricsAddr == "" }},
		{"gid index auto", with("GOBPS_RDMA_GID_INDEX=AUTO"), func(c *Config) bool { return c.RDMAGIDIndex == -1 }},
		{"gid index 3", with("GOBPS_RDMA_GID_INDEX=3"), func(c *Config) bool { return c.RDMAGIDIndex == 3 }},
		{"rdma depths and cache", with("GOBPS_RDMA_SEND_DEPTH=4096", "GOBPS_RDMA_RECV_DEPTH=1", "GOBPS_RDMA_MR_CACHE_BYTES=1048576"),
			func(c *Config) bool {
				return c.RDMASendDepth == 4096 && c.RDMARecvDepth == 1 && c.RDMAMRCacheBytes == 1<<20
			}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := parse(tt.env)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Errorf("unexpected %+v", *c)
			}
		})
	}
}

func TestPartitionRounding(t *testing.T) {
	tests := []struct {
		desc  string
		value string
		want  int
	}{
		{"default", "", 4 << 20},
		{"exact page multiple", "8192", 8192},
		{"rounded down", "12287", 8192},
		{"one byte below a page multiple", "4194303", 4190208},
		{"below one page rounds up to a page", "1", 4096},
		{"one page", "4096", 4096},
		{"largest", "1073741824", 1 << 30},
		{"largest plus a bit rounds down", "1073745919", 1 << 30},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := parse(with("BYTEPS_PARTITION_BYTES=" + tt.value))
			if err != nil {
				t.Fatal(err)
			}
			if c.PartitionBytes != tt.want {
				t.Errorf("PartitionBytes = %d, want %d", c.PartitionBytes, tt.want)
			}
		})
	}
}

// TestSchedulingCredit: the BytePS compatibility rule. Values 1..64 count
// partitions, 0 or unset means four partitions, anything larger is bytes.
func TestSchedulingCredit(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		desc, credit, partition string
		want                    int
	}{
		{"unset: 4 partitions", "", "", 16 * mib},
		{"zero: 4 partitions", "0", "", 16 * mib},
		{"zero with small partitions", "0", "8192", 4 * 8192},
		{"one partition", "1", "", 4 * mib},
		{"count of partitions", "10", "1048576", 10 * mib},
		{"64 is still a count", "64", "4096", 64 * 4096},
		{"count uses the rounded partition", "2", "5000", 2 * 4096},
		{"bytes", "33554432", "", 32 * mib},
		{"bytes, not a multiple of the partition", "5000000", "", 5000000},
		{"bytes equal to one partition", "4096", "4096", 4096},
		{"count with the largest partition", "64", "1073741824", 64 << 30},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := parse(with("BYTEPS_SCHEDULING_CREDIT="+tt.credit, "BYTEPS_PARTITION_BYTES="+tt.partition))
			if err != nil {
				t.Fatal(err)
			}
			if c.SchedulingCredit != tt.want {
				t.Errorf("SchedulingCredit = %d, want %d", c.SchedulingCredit, tt.want)
			}
		})
	}
	// 65..PartitionBytes-1 are bytes, and too few.
	for _, v := range []string{"65", "4095", "4194303"} {
		if _, err := parse(with("BYTEPS_SCHEDULING_CREDIT=" + v)); err == nil ||
			!strings.Contains(err.Error(), "less than one partition") {
			t.Errorf("BYTEPS_SCHEDULING_CREDIT=%s: error %v, want less than one partition", v, err)
		}
	}
}

// TestAllProblemsAtOnce: a user sees every mistake in one run, in table
// order, and no knock-on error from a variable that was already reported.
func TestAllProblemsAtOnce(t *testing.T) {
	env := with("DMLC_ROLE", "DMLC_NUM_WORKER=zero", "DMLC_PS_ROOT_PORT=abc",
		"DMLC_WORKER_ID=5", // would be >= DMLC_NUM_WORKER, but that is already wrong
		"BYTEPS_PARTITION_BYTES=big", "BYTEPS_SCHEDULING_CREDIT=7", "BYTEPS_ENABLE_ASYNC=1",
		"GOBPS_HEARTBEAT_INTERVAL=never", "GOBPS_HEARTBEAT_TIMEOUT=0.5")
	_, err := parse(env)
	if err == nil {
		t.Fatal("no error")
	}
	want := []string{
		`config: DMLC_ROLE is required (scheduler, server or worker)`,
		`config: DMLC_NUM_WORKER="zero": not an integer`,
		`config: DMLC_PS_ROOT_PORT="abc": not an integer`,
		`config: BYTEPS_PARTITION_BYTES="big": not an integer`,
		`config: BYTEPS_ENABLE_ASYNC="1": asynchronous mode is not implemented yet`,
		`config: GOBPS_HEARTBEAT_INTERVAL="never": not a duration`,
	}
	errs := unjoin(err)
	if len(errs) != len(want) {
		t.Fatalf("%d errors, want %d:\n%v", len(errs), len(want), err)
	}
	for i, e := range errs {
		if !strings.HasPrefix(e.Error(), want[i]) {
			t.Errorf("error %d = %q, want %q", i, e, want[i])
		}
	}
}

func TestEnvironRoundTrip(t *testing.T) {
	tests := []struct {
		desc string
		env  map[string]string
	}{
		{"defaults", base()},
		{"everything set", with(
			"DMLC_ROLE=server", "DMLC_NUM_WORKER=4", "DMLC_NUM_SERVER=2", "DMLC_PS_ROOT_URI=fe80::1",
			"DMLC_PS_ROOT_PORT=1234", "DMLC_WORKER_ID=3", "DMLC_INTERFACE=ib0", "DMLC_NODE_HOST=10.1.2.3",
			"BYTEPS_LOCAL_RANK=2", "BYTEPS_LOCAL_SIZE=4", "BYTEPS_PARTITION_BYTES=100000",
			"BYTEPS_SCHEDULING_CREDIT=3", "BYTEPS_SERVER_ENGINE_THREAD=9", "BYTEPS_ENABLE_ASYNC=false",
			"BYTEPS_TRACE_ON=true", "BYTEPS_TRACE_DIR=/var/trace dir", "BYTEPS_LOG_LEVEL=trace",
			"GOBPS_HEARTBEAT_INTERVAL=0.25", "GOBPS_HEARTBEAT_TIMEOUT=1m1.5s", "GOBPS_TCP_LANES=8",
			"GOBPS_CHECKSUM=1", "GOBPS_SERVER_PORT=7000")},
		{"credit in bytes", with("BYTEPS_SCHEDULING_CREDIT=99999999")},
		{"rdma set", with("BYTEPS_ENABLE_RDMA=true", "DMLC_ENABLE_RDMA=IBVERBS", "GOBPS_RDMA_DEVICE=rxe0",
			"GOBPS_RDMA_GID_INDEX=1", "GOBPS_RDMA_SEND_DEPTH=16", "GOBPS_RDMA_RECV_DEPTH=8", "GOBPS_RDMA_MR_CACHE_BYTES=99999999")},
		{"rdma off", with("BYTEPS_ENABLE_RDMA=False", "DMLC_ENABLE_RDMA=0", "GOBPS_RDMA_GID_INDEX=auto")},
		{"odd durations", with("GOBPS_HEARTBEAT_INTERVAL=1ns", "GOBPS_HEARTBEAT_TIMEOUT=2562047h")},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := parse(tt.env)
			if err != nil {
				t.Fatal(err)
			}
			environ := c.Environ()
			vars := Variables()
			if len(environ) != len(vars) {
				t.Fatalf("Environ has %d entries, Variables %d", len(environ), len(vars))
			}
			child := map[string]string{}
			for i, kv := range environ {
				name, value, ok := strings.Cut(kv, "=")
				if !ok || name != vars[i].Name {
					t.Fatalf("Environ()[%d] = %q, want %s=...", i, kv, vars[i].Name)
				}
				child[name] = value
			}
			c2, err := parse(child)
			if err != nil {
				t.Fatalf("Parse(Environ()): %v\n%q", err, environ)
			}
			if *c2 != *c {
				t.Errorf("round trip changed the config\n got %+v\nwant %+v", *c2, *c)
			}
		})
	}
}

// TestEnvironOverridesInherited: an unset optional variable is written as
// NAME= so that it overrides what the child would otherwise inherit.
func TestEnvironOverridesInherited(t *testing.T) {
	c, err := parse(base())
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DMLC_WORKER_ID": "1", "DMLC_NODE_HOST": "stale"}
	for _, kv := range c.Environ() {
		name, value, _ := strings.Cut(kv, "=")
		env[name] = value
	}
	c2, err := parse(env)
	if err != nil {
		t.Fatal(err)
	}
	if c2.WorkerID != -1 || c2.NodeHost != "" {
		t.Errorf("inherited values survived: WorkerID %d, NodeHost %q", c2.WorkerID, c2.NodeHost)
	}
}

func TestValidate(t *testing.T) {
	good := wantDefaults()
	tests := []struct {
		desc string
		cfg  *Config
		want []string // substrings, one per expected error
	}{
		{"parsed defaults", &good, nil},
		{"nil", nil, []string{"config: nil Config"}},
		{"zero value", &Config{}, []string{
			"config: DMLC_ROLE is required",
			`config: DMLC_NUM_WORKER="0": must be between 1 and`,
			`config: DMLC_NUM_SERVER="0": must be between 1 and`,
			"config: DMLC_PS_ROOT_URI is required",
			`config: DMLC_PS_ROOT_PORT="0": must be between 1 and 65535`,
			`config: BYTEPS_LOCAL_SIZE="0": must be between 1 and`,
			`config: BYTEPS_PARTITION_BYTES="0": must be at least 4096`,
			`config: BYTEPS_SERVER_ENGINE_THREAD="0": must be between 1 and 1024`,
			`config: BYTEPS_LOG_LEVEL="": must be one of`,
			`config: GOBPS_HEARTBEAT_INTERVAL="0s": must be positive`,
			`config: GOBPS_HEARTBEAT_TIMEOUT="0s": must be positive`,
			`config: GOBPS_TCP_LANES="0": must be between 1 and 64`,
			`config: GOBPS_HELLO_TIMEOUT="0s": must be positive`,
			`config: GOBPS_GPU="": must be auto or off`,
			`config: GOBPS_GPU_TIMEOUT="0s": must be positive`,
			`config: GOBPS_RDMA_SEND_DEPTH="0": must be between 1 and 4096`,
			`config: GOBPS_RDMA_RECV_DEPTH="0": must be between 1 and 4096`,
			`config: GOBPS_RDMA_MR_CACHE_BYTES="0": must be at least 1048576`,
		}},
		{"partition not a page multiple", mod(func(c *Config) { c.PartitionBytes = 5000 }),
			[]string{`config: BYTEPS_PARTITION_BYTES="5000": must be a multiple of 4096`}},
		{"credit is bytes once parsed", mod(func(c *Config) { c.SchedulingCredit = 4 }),
			[]string{`config: BYTEPS_SCHEDULING_CREDIT="4": a credit of 4 bytes is less than one partition`}},
		{"async", mod(func(c *Config) { c.Async = true }),
			[]string{`config: BYTEPS_ENABLE_ASYNC="1": asynchronous mode is not implemented yet`}},
		{"negative declaration waits", mod(func(c *Config) { c.DeclareWarn, c.DeclareTimeout = -time.Second, -time.Second }),
			[]string{`config: GOBPS_DECLARE_WARN="-1s": must not be negative`, `config: GOBPS_DECLARE_TIMEOUT="-1s": must not be negative`}},
		{"lower-case log level", mod(func(c *Config) { c.LogLevel = "info" }),
			[]string{`config: BYTEPS_LOG_LEVEL="info": must be one of`}},
		{"unknown log format", mod(func(c *Config) { c.LogFormat = "xml" }),
			[]string{`config: GOBPS_LOG_FORMAT="xml": must be console or json`}},
		{"trace without a directory", mod(func(c *Config) { c.TraceOn, c.TraceDir = true, "" }),
			[]string{`config: BYTEPS_TRACE_DIR="": must be set when BYTEPS_TRACE_ON=1`}},
		{"worker id below -1", mod(func(c *Config) { c.WorkerID = -2 }),
			[]string{`config: DMLC_WORKER_ID="-2": must be at least 0 (or unset)`}},
		{"unknown GPU mode", mod(func(c *Config) { c.GPU = "cuda" }),
			[]string{`config: GOBPS_GPU="cuda": must be auto or off`}},
		{"the fake device is no setting", mod(func(c *Config) { c.GPU = "fake" }),
			[]string{`config: GOBPS_GPU="fake": must be auto or off`}},
		{"role upper-case", mod(func(c *Config) { c.Role = "WORKER" }),
			[]string{`config: DMLC_ROLE="WORKER": must be scheduler, server or worker`}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			err := tt.cfg.Validate()
			errs := unjoin(err)
			if len(errs) != len(tt.want) {
				t.Fatalf("%d errors, want %d:\n%v", len(errs), len(tt.want), err)
			}
			for i, e := range errs {
				if !strings.HasPrefix(e.Error(), tt.want[i]) {
					t.Errorf("error %d = %q, want prefix %q", i, e, tt.want[i])
				}
			}
		})
	}
}

func mod(f func(*Config)) *Config {
	c := wantDefaults()
	f(&c)
	return &c
}

// TestVariablesTable: the table covers every Config field exactly once with
// a type Parse handles, and each row is well formed.
func TestVariablesTable(t *testing.T) {
	var c Config
	cv := reflect.ValueOf(&c).Elem()
	seen := map[uintptr]string{}
	names := map[string]bool{}
	for _, s := range table {
		if names[s.Name] {
			t.Errorf("%s listed twice", s.Name)
		}
		names[s.Name] = true
		p := s.field(&c)
		switch p.(type) {
		case *int, *string, *bool, *time.Duration, *Role:
		default:
			t.Errorf("%s: field type %T not handled by parseValue", s.Name, p)
		}
		addr := reflect.ValueOf(p).Pointer()
		if other, ok := seen[addr]; ok {
			t.Errorf("%s and %s share a field", s.Name, other)
		}
		seen[addr] = s.Name
		if s.Required != (s.what != "") {
			t.Errorf("%s: Required=%v but what=%q", s.Name, s.Required, s.what)
		}
		if s.Required && s.Default != "" {
			t.Errorf("%s: required with default %q", s.Name, s.Default)
		}
		if len(s.Roles) == 0 {
			t.Errorf("%s: no roles", s.Name)
		}
		if !strings.HasSuffix(s.Doc, ".") || strings.Count(s.Doc, ". ") > 0 {
			t.Errorf("%s: Doc %q is not one sentence", s.Name, s.Doc)
		}
	}
	if len(seen) != cv.NumField() {
		t.Errorf("table covers %d of Config's %d fields", len(seen), cv.NumField())
	}
	// Variables returns a copy.
	v := Variables()
	v[0].Name, v[0].Roles[0] = "X", "X"
	if table[0].Name == "X" || table[0].Roles[0] == "X" {
		t.Error("Variables returned the table itself")
	}
}

// TestDocsListEveryVariable keeps docs/env.md in step with Variables: every
// variable has a table row "| `NAME` | default | roles | ... |" whose default
// and roles agree with the code.
func TestDocsListEveryVariable(t *testing.T) {
	b, err := os.ReadFile("../docs/env.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{}
	for line := range strings.Lines(string(b)) {
		cells := strings.Split(strings.TrimSpace(line), "|")
		if len(cells) < 5 || cells[0] != "" {
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows[name] = cells[1:]
	}
	for _, v := range Variables() {
		cells, ok := rows[v.Name]
		if !ok {
			t.Errorf("docs/env.md has no table row for %s", v.Name)
			continue
		}
		wantDefault := "`" + v.Default + "`"
		if v.Required {
			wantDefault = "required"
		} else if v.Default == "" {
			wantDefault = "unset"
		}
		if !strings.HasPrefix(cells[1], wantDefault) {
			t.Errorf("docs/env.md: %s default is %q, want it to start with %q", v.Name, cells[1], wantDefault)
		}
		var roles []string
		for _, r := range v.Roles {
			roles = append(roles, string(r))
		}
		wantRoles := strings.Join(roles, ", ")
		if slices.Equal(v.Roles, allRoles) {
			wantRoles = "all"
		}
		if cells[2] != wantRoles {
			t.Errorf("docs/env.md: %s is read by %q, want %q", v.Name, cells[2], wantRoles)
		}
	}
	// Variables read outside Go, by the PyTorch plugin (python/gobps/_lib.py).
	known := map[string]bool{"GOBPS_LIB": true}
	for _, v := range Variables() {
		known[v.Name] = true
	}
	for name := range rows {
		if (strings.HasPrefix(name, "DMLC_") || strings.HasPrefix(name, "BYTEPS_") ||
			strings.HasPrefix(name, "GOBPS_")) && !known[name] {
			t.Errorf("docs/env.md lists %s, which Variables does not", name)
		}
	}
}

// FuzzParse: no input panics, and whatever Parse accepts survives the
// Environ round trip.
func FuzzParse(f *testing.F) {
	f.Add("worker\n2\n3\n10.0.0.1\n9000")
	f.Add("server\n1\n1\n::1\n1\n0\neth0\nh\n0\n1\n1\n64\n4\nfalse\n1\n/t\ninfo\n0.5\n1\n64\n1\n0")
	f.Add("scheduler\n1\n1\nh\n65535\n\n\n\n\n\n4096\n1e300\nNaN\n\x00\n-0\n")
	f.Fuzz(func(t *testing.T, s string) {
		values := strings.Split(s, "\n")
		env := map[string]string{}
		for i, v := range Variables() {
			if i < len(values) {
				env[v.Name] = values[i]
			}
		}
		c, err := parse(env)
		if err != nil {
			if c != nil {
				t.Fatal("Config returned with an error")
			}
			return
		}
		_ = c.RootAddr()
		_ = c.NumWorkerProcs()
		child := map[string]string{}
		for _, kv := range c.Environ() {
			name, value, _ := strings.Cut(kv, "=")
			child[name] = value
		}
		c2, err := parse(child)
		if err != nil {
			t.Fatalf("Parse(Environ()): %v", err)
		}
		if *c2 != *c {
			t.Fatalf("round trip changed the config\n got %+v\nwant %+v", *c2, *c)
		}
	})
}

// unjoin splits an errors.Join error into its parts.
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// TestRDMAContradiction: BYTEPS_ENABLE_RDMA=0 with DMLC_ENABLE_RDMA=ibverbs
// asks for TCP and for verbs at once, and is refused.
func TestRDMAContradiction(t *testing.T) {
	_, err := parse(with("BYTEPS_ENABLE_RDMA=0", "DMLC_ENABLE_RDMA=ibverbs"))
	errs := unjoin(err)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), `config: BYTEPS_ENABLE_RDMA="0": contradicts DMLC_ENABLE_RDMA=ibverbs`) {
		t.Fatalf("got %v", err)
	}
	c := wantDefaults()
	c.EnableRDMA, c.DMLCEnableRDMA = "0", "ibverbs"
	if err := c.Validate(); err == nil {
		t.Fatal("Validate accepted the contradiction")
	}
}

// TestSecret: the secret's rules, and that no error ever shows it.
func TestSecret(t *testing.T) {
	dir := t.TempDir()
	good := dir + "/secret"
	os.WriteFile(good, []byte("a secret of the job, long enough\n"), 0o600)
	open := dir + "/open"
	os.WriteFile(open, []byte("a secret of the job, long enough\n"), 0o644)
	short := dir + "/short"
	os.WriteFile(short, []byte("tiny\n"), 0o600)
	for _, c := range []struct {
		env  []string
		want string // "" : valid
	}{
		{[]string{"GOBPS_SECRET=s3cr3t-short"}, "at least 16"},
		{[]string{"GOBPS_SECRET=a secret of the job, long enough"}, ""},
		{[]string{"GOBPS_SECRET_FILE=" + good}, ""},
		{[]string{"GOBPS_SECRET_FILE=" + open}, "chmod 600"},
		{[]string{"GOBPS_SECRET_FILE=" + short}, "at least 16"},
		{[]string{"GOBPS_SECRET_FILE=" + dir + "/missing"}, "no such file"},
		{[]string{"GOBPS_SECRET=a secret of the job, long enough", "GOBPS_SECRET_FILE=" + good}, "set one of them"},
		{[]string{"GOBPS_TLS_CERT=/x.pem"}, "all three or none"},
	} {
		cfg, err := parse(with(c.env...))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: %v", c.env, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: %v; want an error mentioning %q", c.env, err, c.want)
		case err != nil && (strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "long enough")):
			t.Errorf("%v: the error shows the secret: %v", c.env, err)
		}
		if c.want == "" {
			a, err := cfg.Auth()
			if err != nil || a == nil || string(a.Secret) != "a secret of the job, long enough" {
				t.Errorf("%v: Auth() = %v, %v", c.env, a, err)
			}
		}
	}
	cfg, err := parse(base())
	if err != nil {
		t.Fatal(err)
	}
	if a, err := cfg.Auth(); a != nil || err != nil {
		t.Errorf("no secret: Auth() = %v, %v; want nil, nil", a, err)
	}
}
