package config

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gobps/gobps/internal/auth"
	"github.com/gobps/gobps/proto"
)

// Role is what a process does in the job; the names are those of DMLC_ROLE.
type Role string

const (
	// Scheduler is the coordinator: rendezvous, address book, barriers,
	// heartbeats. The name is kept for BytePS compatibility.
	Scheduler Role = "scheduler"
	// Server sums the pushes of every worker for the keys it owns.
	Server Role = "server"
	// Worker is a training process (one per GPU).
	Worker Role = "worker"
)

func (r Role) valid() bool { return r == Scheduler || r == Server || r == Worker }

// Config is the parsed environment of one gobps process. Each field names the
// variable it comes from; see Variables and docs/env.md for defaults and
// meaning.
type Config struct {
	Role      Role   // DMLC_ROLE
	NumWorker int    // DMLC_NUM_WORKER: worker machines
	NumServer int    // DMLC_NUM_SERVER
	RootURI   string // DMLC_PS_ROOT_URI: coordinator host or IP
	RootPort  int    // DMLC_PS_ROOT_PORT
	WorkerID  int    // DMLC_WORKER_ID; -1 when unset (the coordinator assigns ranks by arrival)
	Interface string // DMLC_INTERFACE
	NodeHost  string // DMLC_NODE_HOST: address this node advertises; "" lets the caller pick

	LocalRank         int           // BYTEPS_LOCAL_RANK
	LocalSize         int           // BYTEPS_LOCAL_SIZE
	PartitionBytes    int           // BYTEPS_PARTITION_BYTES, a whole number of pages
	SchedulingCredit  int           // BYTEPS_SCHEDULING_CREDIT, in bytes once parsed
	EngineThreads     int           // BYTEPS_SERVER_ENGINE_THREAD
	Async             bool          // BYTEPS_ENABLE_ASYNC; Validate rejects true for now
	TraceOn           bool          // BYTEPS_TRACE_ON
	TraceDir          string        // BYTEPS_TRACE_DIR
	LogLevel          string        // BYTEPS_LOG_LEVEL, upper-case
	LogFormat         string        // GOBPS_LOG_FORMAT: console or json (lower-case); "" is console
	HeartbeatInterval time.Duration // GOBPS_HEARTBEAT_INTERVAL
	HeartbeatTimeout  time.Duration // GOBPS_HEARTBEAT_TIMEOUT, > HeartbeatInterval
	Lanes             int           // GOBPS_TCP_LANES: TCP connections per worker-server pair
	Checksum          bool          // GOBPS_CHECKSUM: CRC32C on every payload
	ServerPort        int           // GOBPS_SERVER_PORT: data port of a server; 0 picks a free one
	ServerID          int           // GOBPS_SERVER_ID: rank of this server; -1 when unset (ranks by arrival)
	ServerMemory      int           // GOBPS_SERVER_MEMORY_BYTES: bytes of keys a server accepts; 0 = a share of the machine's memory
	HelloTimeout      time.Duration // GOBPS_HELLO_TIMEOUT: how long an accepted data connection has to say hello
	DeclareWarn       time.Duration // GOBPS_DECLARE_WARN: how long a tensor declared by some workers only waits before they are told whom they wait for; 0 = never
	DeclareTimeout    time.Duration // GOBPS_DECLARE_TIMEOUT: how long before such a tensor fails; 0 = never
	Progress          time.Duration // GOBPS_PROGRESS: workers report their counts, and the coordinator logs the job's progress, this often; 0 = never
	StallWarning      time.Duration // GOBPS_STALL_WARNING: a round waiting this long without a push is reported; 0 = never
	StallShutdown     time.Duration // GOBPS_STALL_SHUTDOWN: a round stalled this long ends the job; 0 = never
	LocalAggregation  bool          // GOBPS_LOCAL_AGGREGATION: one push per machine per key
	ForceDistributed  bool          // BYTEPS_FORCE_DISTRIBUTED: sums go through the servers even when one machine holds every worker
	MixedMode         bool          // BYTEPS_ENABLE_MIXED_MODE: weigh co-located and dedicated servers
	GPU               string        // GOBPS_GPU: auto or off (lower-case)
	GPUTimeout        time.Duration // GOBPS_GPU_TIMEOUT: bound of each wait on a device copy

	EnableRDMA       string // BYTEPS_ENABLE_RDMA: "" (unset: verbs when usable), "0" or "1"; see RDMAMode
	DMLCEnableRDMA   string // DMLC_ENABLE_RDMA (ps-lite): "" (unset), "0" or "ibverbs"; see RDMAMode
	RDMADevice       string // GOBPS_RDMA_DEVICE: verbs device; "" takes the first with an active port
	RDMAGIDIndex     int    // GOBPS_RDMA_GID_INDEX: RoCE GID table index; -1 (auto) picks one
	RDMASendDepth    int    // GOBPS_RDMA_SEND_DEPTH: frames in flight per verbs connection
	RDMARecvDepth    int    // GOBPS_RDMA_RECV_DEPTH: receive buffers per verbs connection
	RDMAMRCacheBytes int    // GOBPS_RDMA_MR_CACHE_BYTES: bound of the verbs MR cache

	Secret     string // GOBPS_SECRET: the job's shared secret; "" for none (see Auth)
	SecretFile string // GOBPS_SECRET_FILE: a file holding it, readable by its owner only
	TLSCert    string // GOBPS_TLS_CERT: this process's PEM certificate, for mutual TLS
	TLSKey     string // GOBPS_TLS_KEY: its PEM private key
	TLSCA      string // GOBPS_TLS_CA: the job's PEM CA bundle

	MetricsAddr string // GOBPS_METRICS_ADDR: host:port of this process's Prometheus endpoint; "" for none
}

// Variable describes one environment variable of the contract.
type Variable struct {
	Name     string
	Default  string // as it would be written in the environment; "" when there is none
	Doc      string // one sentence
	Required bool
	Roles    []Role // the roles whose processes read it
}

// Names of the variables.
const (
	envRole          = "DMLC_ROLE"
	envNumWorker     = "DMLC_NUM_WORKER"
	envNumServer     = "DMLC_NUM_SERVER"
	envRootURI       = "DMLC_PS_ROOT_URI"
	envRootPort      = "DMLC_PS_ROOT_PORT"
	envWorkerID      = "DMLC_WORKER_ID"
	envInterface     = "DMLC_INTERFACE"
	envNodeHost      = "DMLC_NODE_HOST"
	envLocalRank     = "BYTEPS_LOCAL_RANK"
	envLocalSize     = "BYTEPS_LOCAL_SIZE"
	envPartition     = "BYTEPS_PARTITION_BYTES"
	envCredit        = "BYTEPS_SCHEDULING_CREDIT"
	envEngineThreads = "BYTEPS_SERVER_ENGINE_THREAD"
	envAsync         = "BYTEPS_ENABLE_ASYNC"
	envTraceOn       = "BYTEPS_TRACE_ON"
	envTraceDir      = "BYTEPS_TRACE_DIR"
	envLogLevel      = "BYTEPS_LOG_LEVEL"
	envLogFormat     = "GOBPS_LOG_FORMAT"
	envHBInterval    = "GOBPS_HEARTBEAT_INTERVAL"
	envHBTimeout     = "GOBPS_HEARTBEAT_TIMEOUT"
	envLanes         = "GOBPS_TCP_LANES"
	envChecksum      = "GOBPS_CHECKSUM"
	envServerPort    = "GOBPS_SERVER_PORT"
	envServerID      = "GOBPS_SERVER_ID"
	envServerMemory  = "GOBPS_SERVER_MEMORY_BYTES"
	envHelloTimeout  = "GOBPS_HELLO_TIMEOUT"
	envDeclareWarn   = "GOBPS_DECLARE_WARN"
	envDeclareTO     = "GOBPS_DECLARE_TIMEOUT"
	envStallWarn     = "GOBPS_STALL_WARNING"
	envStallShut     = "GOBPS_STALL_SHUTDOWN"
	envProgress      = "GOBPS_PROGRESS"
	envLocalAgg      = "GOBPS_LOCAL_AGGREGATION"
	envForceDist     = "BYTEPS_FORCE_DISTRIBUTED"
	envMixedMode     = "BYTEPS_ENABLE_MIXED_MODE"
	envGPU           = "GOBPS_GPU"
	envGPUTimeout    = "GOBPS_GPU_TIMEOUT"
	envEnableRDMA    = "BYTEPS_ENABLE_RDMA"
	envDMLCRDMA      = "DMLC_ENABLE_RDMA"
	envRDMADevice    = "GOBPS_RDMA_DEVICE"
	envRDMAGIDIndex  = "GOBPS_RDMA_GID_INDEX"
	envRDMASend      = "GOBPS_RDMA_SEND_DEPTH"
	envRDMARecv      = "GOBPS_RDMA_RECV_DEPTH"
	envRDMAMRCache   = "GOBPS_RDMA_MR_CACHE_BYTES"
	envSecret        = "GOBPS_SECRET"
	envSecretFile    = "GOBPS_SECRET_FILE"
	envTLSCert       = "GOBPS_TLS_CERT"
	envTLSKey        = "GOBPS_TLS_KEY"
	envTLSCA         = "GOBPS_TLS_CA"
	envMetricsAddr   = "GOBPS_METRICS_ADDR"
)

// MinSecretLen is the shortest secret accepted: a guessable secret
// protects nothing.
const MinSecretLen = 16

// Limits that Validate enforces.
const (
	// maxCount bounds DMLC_NUM_WORKER, DMLC_NUM_SERVER, BYTEPS_LOCAL_SIZE and
	// the number of worker processes, so that node counts and ranks never
	// overflow.
	maxCount = 1 << 20
	// creditCountMax: a BYTEPS_SCHEDULING_CREDIT at most this large counts
	// partitions rather than bytes (BytePS compatibility).
	creditCountMax = 64
	// defaultCreditParts is the default credit in partitions.
	defaultCreditParts = 4
	maxEngineThreads   = 1024
	maxLanes           = 64
	// maxRDMADepth bounds GOBPS_RDMA_SEND_DEPTH and GOBPS_RDMA_RECV_DEPTH
	// (the transport's limit too); maxGIDIndex the GID table index.
	maxRDMADepth   = 4096
	maxGIDIndex    = 255
	minMRCacheSize = 1 << 20
	// rdmaAuto is how GOBPS_RDMA_GID_INDEX asks for automatic choice.
	rdmaAuto = "auto"
)

// logLevels are the accepted values of BYTEPS_LOG_LEVEL, most verbose first.
var logLevels = []string{"TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "FATAL"}

// Log formats, the accepted values of GOBPS_LOG_FORMAT.
const (
	LogConsole = "console"
	LogJSON    = "json"
)

var (
	allRoles      = []Role{Scheduler, Server, Worker}
	workerOnly    = []Role{Worker}
	serverOnly    = []Role{Server}
	serverWorker  = []Role{Server, Worker}
	defaultConfig = Config{
		WorkerID:          -1,
		ServerID:          -1,
		LocalRank:         0,
		LocalSize:         1,
		PartitionBytes:    proto.DefaultPartitionBytes,
		SchedulingCredit:  0, // resolved to defaultCreditParts partitions by Parse
		EngineThreads:     4,
		TraceDir:          "./trace",
		LogLevel:          "WARNING",
		LogFormat:         LogConsole,
		HeartbeatInterval: time.Second,
		HeartbeatTimeout:  5 * time.Second,
		Lanes:             2,
		HelloTimeout:      10 * time.Second,
		StallWarning:      60 * time.Second,
		DeclareWarn:       10 * time.Second,
		LocalAggregation:  true,
		GPU:               "auto",
		GPUTimeout:        time.Minute,
		RDMAGIDIndex:      -1,
		RDMASendDepth:     128,
		RDMARecvDepth:     64,
		RDMAMRCacheBytes:  4 << 30,
	}
)

// spec is one row of the variable table: its public description and where it
// lives in a Config. Parse, Environ and Variables all walk this table, so
// they cannot disagree about which variables exist.
type spec struct {
	Variable
	// what completes "is required (...)" for a required variable.
	what string
	// field returns a pointer to the Config field: *int, *string, *bool,
	// *time.Duration or *Role.
	field func(*Config) any
}

var table = []spec{
	{
		Variable: Variable{Name: envRole, Required: true, Roles: allRoles,
			Doc: "What this process is: scheduler (the coordinator), server or worker."},
		what:  "scheduler, server or worker",
		field: func(c *Config) any { return &c.Role },
	},
	{
		Variable: Variable{Name: envNumWorker, Required: true, Roles: allRoles,
			Doc: "Number of worker machines; each runs BYTEPS_LOCAL_SIZE worker processes."},
		what:  "number of worker machines",
		field: func(c *Config) any { return &c.NumWorker },
	},
	{
		Variable: Variable{Name: envNumServer, Required: true, Roles: allRoles,
			Doc: "Number of server processes."},
		what:  "number of servers",
		field: func(c *Config) any { return &c.NumServer },
	},
	{
		Variable: Variable{Name: envRootURI, Required: true, Roles: allRoles,
			Doc: "Host name or IP address of the coordinator (scheduler), without a port."},
		what:  "coordinator host name or IP address",
		field: func(c *Config) any { return &c.RootURI },
	},
	{
		Variable: Variable{Name: envRootPort, Required: true, Roles: allRoles,
			Doc: "TCP port the coordinator listens on, 1 to 65535."},
		what:  "coordinator port",
		field: func(c *Config) any { return &c.RootPort },
	},
	{
		Variable: Variable{Name: envWorkerID, Roles: workerOnly,
			Doc: "Rank of this worker machine, 0 to DMLC_NUM_WORKER-1; unset lets the coordinator assign ranks in order of arrival."},
		field: func(c *Config) any { return &c.WorkerID },
	},
	{
		Variable: Variable{Name: envInterface, Roles: allRoles,
			Doc: "Network interface whose address this node uses; unset picks one automatically."},
		field: func(c *Config) any { return &c.Interface },
	},
	{
		Variable: Variable{Name: envNodeHost, Roles: allRoles,
			Doc: "Host name or IP address this node advertises to the others; unset picks one automatically."},
		field: func(c *Config) any { return &c.NodeHost },
	},
	{
		Variable: Variable{Name: envLocalRank, Default: "0", Roles: workerOnly,
			Doc: "Index of this worker process on its machine, 0 to BYTEPS_LOCAL_SIZE-1."},
		field: func(c *Config) any { return &c.LocalRank },
	},
	{
		Variable: Variable{Name: envLocalSize, Default: "1", Roles: workerOnly,
			Doc: "Number of worker processes (usually GPUs) on each worker machine."},
		field: func(c *Config) any { return &c.LocalSize },
	},
	{
		Variable: Variable{Name: envPartition, Default: strconv.Itoa(proto.DefaultPartitionBytes), Roles: workerOnly,
			Doc: "Largest partition a tensor is split into, in bytes, rounded down to a multiple of 4096 (at least 4096)."},
		field: func(c *Config) any { return &c.PartitionBytes },
	},
	{
		Variable: Variable{Name: envCredit, Default: "0", Roles: workerOnly,
			Doc: "Bytes a worker may have in flight; 1 to 64 counts partitions instead, and 0 means 4 partitions."},
		field: func(c *Config) any { return &c.SchedulingCredit },
	},
	{
		Variable: Variable{Name: envEngineThreads, Default: "4", Roles: serverOnly,
			Doc: "Number of summation engines (goroutines) per server, 1 to 1024."},
		field: func(c *Config) any { return &c.EngineThreads },
	},
	{
		Variable: Variable{Name: envAsync, Default: "0", Roles: serverWorker,
			Doc: "Asynchronous training (not implemented yet: 1 is rejected)."},
		field: func(c *Config) any { return &c.Async },
	},
	{
		Variable: Variable{Name: envTraceOn, Default: "0", Roles: workerOnly,
			Doc: "Record a timeline of every tensor's communication."},
		field: func(c *Config) any { return &c.TraceOn },
	},
	{
		Variable: Variable{Name: envTraceDir, Default: defaultConfig.TraceDir, Roles: workerOnly,
			Doc: "Directory the timeline is written to when BYTEPS_TRACE_ON=1."},
		field: func(c *Config) any { return &c.TraceDir },
	},
	{
		Variable: Variable{Name: envLogLevel, Default: defaultConfig.LogLevel, Roles: allRoles,
			Doc: "Least severe log level printed: TRACE, DEBUG, INFO, WARNING, ERROR or FATAL."},
		field: func(c *Config) any { return &c.LogLevel },
	},
	{
		Variable: Variable{Name: envLogFormat, Default: defaultConfig.LogFormat, Roles: allRoles,
			Doc: "Log line format: console (readable lines) or json (one JSON object a line, for log collectors)."},
		field: func(c *Config) any { return &c.LogFormat },
	},
	{
		Variable: Variable{Name: envEnableRDMA, Roles: serverWorker,
			Doc: "Transport choice: 1 requires RDMA verbs, 0 uses TCP, unset uses verbs when a usable RDMA device exists."},
		field: func(c *Config) any { return &c.EnableRDMA },
	},
	{
		Variable: Variable{Name: envDMLCRDMA, Roles: serverWorker,
			Doc: "ps-lite's switch: ibverbs (or 1) requires RDMA verbs like BYTEPS_ENABLE_RDMA=1; 0 or unset changes nothing."},
		field: func(c *Config) any { return &c.DMLCEnableRDMA },
	},
	{
		Variable: Variable{Name: envHBInterval, Default: defaultConfig.HeartbeatInterval.String(), Roles: allRoles,
			Doc: "How often each node sends the coordinator a heartbeat."},
		field: func(c *Config) any { return &c.HeartbeatInterval },
	},
	{
		Variable: Variable{Name: envHBTimeout, Default: defaultConfig.HeartbeatTimeout.String(), Roles: allRoles,
			Doc: "How long without a heartbeat before a node is declared dead; must exceed GOBPS_HEARTBEAT_INTERVAL."},
		field: func(c *Config) any { return &c.HeartbeatTimeout },
	},
	{
		Variable: Variable{Name: envLanes, Default: strconv.Itoa(defaultConfig.Lanes), Roles: serverWorker,
			Doc: "TCP connections per worker-server pair, 1 to 64."},
		field: func(c *Config) any { return &c.Lanes },
	},
	{
		Variable: Variable{Name: envChecksum, Default: "0", Roles: serverWorker,
			Doc: "Send a CRC32C of every payload and check it on arrival."},
		field: func(c *Config) any { return &c.Checksum },
	},
	{
		Variable: Variable{Name: envServerPort, Default: "0", Roles: serverOnly,
			Doc: "TCP port a server listens on for data; 0 picks a free port."},
		field: func(c *Config) any { return &c.ServerPort },
	},
	{
		Variable: Variable{Name: envServerID, Roles: serverOnly,
			Doc: "Rank of this server, 0 to DMLC_NUM_SERVER-1; unset lets the coordinator assign ranks in order of arrival."},
		field: func(c *Config) any { return &c.ServerID },
	},
	{
		Variable: Variable{Name: envServerMemory, Default: "0", Roles: serverOnly,
			Doc: "Most bytes of keys a server accepts in declarations (it keeps two rounds' sums of each and refuses a declaration beyond this); 0 means a quarter of the memory the server may use (its cgroup's limit, or the machine's memory): each declared byte costs about two, the sums of the two open rounds."},
		field: func(c *Config) any { return &c.ServerMemory },
	},
	{
		Variable: Variable{Name: envHelloTimeout, Default: defaultConfig.HelloTimeout.String(), Roles: serverOnly,
			Doc: "How long a connection accepted by a server has to say hello (who it is) before it is closed."},
		field: func(c *Config) any { return &c.HelloTimeout },
	},
	{
		Variable: Variable{Name: envDeclareWarn, Default: defaultConfig.DeclareWarn.String(), Roles: serverOnly,
			Doc: "How long a tensor that some workers declared (and push) and others did not may wait before the server tells the workers that did, naming the tensor and the ranks that have not declared it; 0 never tells."},
		field: func(c *Config) any { return &c.DeclareWarn },
	},
	{
		Variable: Variable{Name: envDeclareTO, Default: "0s", Roles: serverOnly,
			Doc: "How long such a tensor may wait before it fails for the workers that declared it, with the same words; 0 waits for ever (a rank that is only slow to get there, loading data for minutes, would fail too)."},
		field: func(c *Config) any { return &c.DeclareTimeout },
	},
	{
		Variable: Variable{Name: envStallWarn, Default: defaultConfig.StallWarning.String(), Roles: serverWorker,
			Doc: "How long a round that has begun may wait without a new push on its key before the server reports it, logging and telling the workers waiting which workers have not pushed which tensors (by name); 0 never reports."},
		field: func(c *Config) any { return &c.StallWarning },
	},
	{
		Variable: Variable{Name: envStallShut, Default: "0s", Roles: serverWorker,
			Doc: "How long a round may stall before the server ends the job with that report, sent to every worker as a fatal error, instead of waiting for ever; 0 never ends it."},
		field: func(c *Config) any { return &c.StallShutdown },
	},
	{
		Variable: Variable{Name: envProgress, Default: "0s", Roles: []Role{Scheduler, Worker},
			Doc: "How often each worker tells the coordinator its counts (push_pulls completed and their tensor bytes) and the coordinator logs one progress line for the job, shown at every log level: push_pulls per second and GB/s per worker, and the slowest worker; 0 (the default) never, and bpsrun --progress sets 5s."},
		field: func(c *Config) any { return &c.Progress },
	},
	{
		Variable: Variable{Name: envLocalAgg, Default: "1", Roles: serverWorker,
			Doc: "Sum the workers of one machine in shared memory first, so that one push per machine reaches the servers (as BytePS does); 0 makes every worker push."},
		field: func(c *Config) any { return &c.LocalAggregation },
	},
	{
		Variable: Variable{Name: envForceDist, Default: "0", Roles: workerOnly,
			Doc: "When every worker is on one machine (DMLC_NUM_WORKER 1, BYTEPS_LOCAL_SIZE at least 2, local aggregation on), a push_pull's sum is complete in shared memory and is handed back from there with no server round trip, as BytePS does; 1 sends it through the servers all the same (for tests and benchmarks)."},
		field: func(c *Config) any { return &c.ForceDistributed },
	},
	{
		Variable: Variable{Name: envMixedMode, Default: "0", Roles: workerOnly,
			Doc: "Mixed mode: servers on worker machines (co-located) and servers on machines of their own (dedicated) get shares of the bytes that balance the two kinds of machine, as BytePS's mixed mode does; 0 spreads the bytes evenly over all servers."},
		field: func(c *Config) any { return &c.MixedMode },
	},
	{
		Variable: Variable{Name: envGPU, Default: defaultConfig.GPU, Roles: workerOnly,
			Doc: "Device tensors: auto uses CUDA (libcuda.so.1, loaded at run time) when present, off refuses them."},
		field: func(c *Config) any { return &c.GPU },
	},
	{
		Variable: Variable{Name: envGPUTimeout, Default: defaultConfig.GPUTimeout.String(), Roles: workerOnly,
			Doc: "How long a worker waits for one device-to-host or host-to-device copy before it fails the tensor."},
		field: func(c *Config) any { return &c.GPUTimeout },
	},
	{
		Variable: Variable{Name: envSecret, Roles: allRoles,
			Doc: "The job's shared secret, at least 16 characters (bpsrun --local makes a fresh one), which every connection between the job's processes then proves both ends hold, by a mutual challenge-response, before anything else; unset, and without GOBPS_SECRET_FILE, the job is unauthenticated and says so at start."},
		field: func(c *Config) any { return &c.Secret },
	},
	{
		Variable: Variable{Name: envSecretFile, Roles: allRoles,
			Doc: "A file holding the job's secret (instead of GOBPS_SECRET), which must be readable by its owner only (mode 0600 or 0400)."},
		field: func(c *Config) any { return &c.SecretFile },
	},
	{
		Variable: Variable{Name: envTLSCert, Roles: allRoles,
			Doc: "PEM certificate of this process: with GOBPS_TLS_KEY and GOBPS_TLS_CA, every TCP connection of the job is mutual TLS 1.3, accepting only certificates the CA signed."},
		field: func(c *Config) any { return &c.TLSCert },
	},
	{
		Variable: Variable{Name: envTLSKey, Roles: allRoles,
			Doc: "PEM private key of GOBPS_TLS_CERT."},
		field: func(c *Config) any { return &c.TLSKey },
	},
	{
		Variable: Variable{Name: envTLSCA, Roles: allRoles,
			Doc: "PEM bundle of the CA whose certificates the job's processes accept (give each job its own: host names are not checked)."},
		field: func(c *Config) any { return &c.TLSCA },
	},
	{
		Variable: Variable{Name: envMetricsAddr, Roles: allRoles,
			Doc: "Address (host:port; port 0 picks a free one) on which this process serves its Prometheus metrics at /metrics; unset serves none."},
		field: func(c *Config) any { return &c.MetricsAddr },
	},
	{
		Variable: Variable{Name: envRDMADevice, Roles: serverWorker,
			Doc: "RDMA device to use, such as mlx5_0 or rxe0; unset takes the first with an active port."},
		field: func(c *Config) any { return &c.RDMADevice },
	},
	{
		Variable: Variable{Name: envRDMAGIDIndex, Default: rdmaAuto, Roles: serverWorker,
			Doc: "GID table index used on RoCE ports, 0 to 255; auto prefers a RoCE v2 GID holding an IPv4 address."},
		field: func(c *Config) any { return &c.RDMAGIDIndex },
	},
	{
		Variable: Variable{Name: envRDMASend, Default: strconv.Itoa(defaultConfig.RDMASendDepth), Roles: serverWorker,
			Doc: "Frames a verbs connection may have in flight before Send waits, 1 to 4096."},
		field: func(c *Config) any { return &c.RDMASendDepth },
	},
	{
		Variable: Variable{Name: envRDMARecv, Default: strconv.Itoa(defaultConfig.RDMARecvDepth), Roles: serverWorker,
			Doc: "Receive buffers (4 KiB each) a verbs connection keeps posted, 1 to 4096."},
		field: func(c *Config) any { return &c.RDMARecvDepth },
	},
	{
		Variable: Variable{Name: envRDMAMRCache, Default: strconv.Itoa(defaultConfig.RDMAMRCacheBytes), Roles: serverWorker,
			Doc: "Bytes of memory the verbs transport keeps registered for reuse, at least 1048576; idle registrations beyond it are dropped, least recently used first."},
		field: func(c *Config) any { return &c.RDMAMRCacheBytes },
	},
}

// Variables returns the table of every environment variable gobps reads, in
// a stable order (BytePS-compatible ones first). The caller may modify the
// result.
func Variables() []Variable {
	out := make([]Variable, len(table))
	for i, s := range table {
		out[i] = s.Variable
		out[i].Roles = slices.Clone(s.Roles)
	}
	return out
}

// FromEnv parses the process environment: Parse(os.LookupEnv).
func FromEnv() (*Config, error) { return Parse(os.LookupEnv) }

// Parse reads every variable through lookup, applies defaults, resolves
// BYTEPS_PARTITION_BYTES and BYTEPS_SCHEDULING_CREDIT, and validates the
// result. On error it returns nil and every problem found, joined. A nil
// lookup reads as an empty environment.
func Parse(lookup func(string) (string, bool)) (*Config, error) {
	c := defaultConfig
	raw := make(map[string]string) // trimmed values of the variables that are set
	bad := make(map[string]bool)   // variables already reported
	var p problems
	for _, s := range table {
		v, ok := "", false
		if lookup != nil {
			v, ok = lookup(s.Name)
		}
		v = strings.TrimSpace(v)
		if !ok || v == "" {
			if s.Required {
				p.add(s.Name, requiredErr(s))
				bad[s.Name] = true
			}
			continue
		}
		raw[s.Name] = v
		if s.Name == envRDMAGIDIndex && strings.EqualFold(v, rdmaAuto) {
			continue // the default, -1
		}
		if err := parseValue(s.field(&c), v); err != nil {
			p.add(s.Name, fmt.Errorf("config: %s=%q: %w", s.Name, v, err))
			bad[s.Name] = true
		}
	}

	c.Role = Role(strings.ToLower(string(c.Role)))
	c.LogLevel = strings.ToUpper(c.LogLevel)
	c.LogFormat = strings.ToLower(c.LogFormat)
	c.GPU = strings.ToLower(c.GPU)
	c.EnableRDMA = normalizeSwitch(c.EnableRDMA, "1")
	c.DMLCEnableRDMA = normalizeSwitch(c.DMLCEnableRDMA, "ibverbs")
	if v, ok := raw[envRDMAGIDIndex]; ok && !bad[envRDMAGIDIndex] && c.RDMAGIDIndex < 0 && !strings.EqualFold(v, rdmaAuto) {
		p.add(envRDMAGIDIndex, valueErr(envRDMAGIDIndex, v, "must be at least 0, or auto"))
		bad[envRDMAGIDIndex] = true
	}
	if v, ok := raw[envWorkerID]; ok && !bad[envWorkerID] && c.WorkerID < 0 {
		p.add(envWorkerID, valueErr(envWorkerID, v, "must be at least 0 (leave it unset to let the coordinator assign ranks)"))
		bad[envWorkerID] = true
	}
	if v, ok := raw[envServerID]; ok && !bad[envServerID] && c.ServerID < 0 {
		p.add(envServerID, valueErr(envServerID, v, "must be at least 0 (leave it unset to let the coordinator assign ranks)"))
		bad[envServerID] = true
	}
	if !bad[envPartition] && c.PartitionBytes > 0 {
		c.PartitionBytes = proto.RoundPartitionBytes(c.PartitionBytes)
	}
	if v, ok := raw[envCredit]; ok && !bad[envCredit] && c.SchedulingCredit < 0 {
		p.add(envCredit, valueErr(envCredit, v, "must not be negative"))
		bad[envCredit] = true
	}
	if !bad[envCredit] && !bad[envPartition] {
		switch n := c.SchedulingCredit; {
		case n == 0:
			c.SchedulingCredit = satMul(defaultCreditParts, c.PartitionBytes)
		case n > 0 && n <= creditCountMax:
			c.SchedulingCredit = satMul(n, c.PartitionBytes)
		}
	}

	c.validate(&p, raw, bad)
	if err := p.err(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks every field against the contract, whether c came from
// Parse or was built by hand, and returns every problem found, joined.
func (c *Config) Validate() error {
	if c == nil {
		return errors.New("config: nil Config")
	}
	var p problems
	c.validate(&p, nil, map[string]bool{})
	return p.err()
}

// validate adds c's problems to p. raw holds the values as the user wrote
// them, quoted in errors in preference to the parsed ones; variables in bad
// were already reported and are not checked again, nor compared with others.
// validate adds to bad every variable it finds wrong.
func (c *Config) validate(p *problems, raw map[string]string, bad map[string]bool) {
	value := func(name string) string {
		if name == envSecret {
			return "(not shown)" // never in an error message or a log
		}
		if v, ok := raw[name]; ok {
			return v
		}
		return formatValue(specFor(name).field(c))
	}
	fail := func(name, format string, args ...any) {
		if bad[name] {
			return
		}
		bad[name] = true
		p.add(name, valueErr(name, value(name), fmt.Sprintf(format, args...)))
	}
	inRange := func(name string, v, lo, hi int) {
		if v < lo || v > hi {
			fail(name, "must be between %d and %d", lo, hi)
		}
	}
	required := func(name string) {
		if !bad[name] {
			bad[name] = true
			p.add(name, requiredErr(specFor(name)))
		}
	}

	switch {
	case c.Role == "":
		required(envRole)
	case !c.Role.valid():
		fail(envRole, "must be scheduler, server or worker")
	}
	inRange(envNumWorker, c.NumWorker, 1, maxCount)
	inRange(envNumServer, c.NumServer, 1, maxCount)
	if c.RootURI == "" {
		required(envRootURI)
	} else if err := checkHost(c.RootURI); err != nil {
		fail(envRootURI, "%v", err)
	}
	inRange(envRootPort, c.RootPort, 1, math.MaxUint16)
	if c.WorkerID < -1 {
		fail(envWorkerID, "must be at least 0 (or unset)")
	} else if c.WorkerID >= 0 && !bad[envNumWorker] && c.WorkerID >= c.NumWorker {
		fail(envWorkerID, "must be less than %s (%d)", envNumWorker, c.NumWorker)
	}
	if c.ServerID < -1 {
		fail(envServerID, "must be at least 0 (or unset)")
	} else if c.ServerID >= 0 && !bad[envNumServer] && c.ServerID >= c.NumServer {
		fail(envServerID, "must be less than %s (%d)", envNumServer, c.NumServer)
	}
	if c.NodeHost != "" {
		if err := checkHost(c.NodeHost); err != nil {
			fail(envNodeHost, "%v", err)
		}
	}

	inRange(envLocalSize, c.LocalSize, 1, maxCount)
	if c.LocalRank < 0 {
		fail(envLocalRank, "must not be negative")
	} else if !bad[envLocalSize] && c.LocalRank >= c.LocalSize {
		fail(envLocalRank, "must be less than %s (%d)", envLocalSize, c.LocalSize)
	}
	if !bad[envNumWorker] && !bad[envLocalSize] && int64(c.NumWorker)*int64(c.LocalSize) > maxCount {
		fail(envLocalSize, "%s×%s is %d worker processes, more than %d",
			envNumWorker, envLocalSize, int64(c.NumWorker)*int64(c.LocalSize), maxCount)
	}
	switch {
	case c.PartitionBytes < proto.PageSize:
		fail(envPartition, "must be at least %d", proto.PageSize)
	case c.PartitionBytes%proto.PageSize != 0:
		fail(envPartition, "must be a multiple of %d", proto.PageSize)
	case c.PartitionBytes > proto.MaxPayload:
		fail(envPartition, "must be at most %d (the largest frame payload)", proto.MaxPayload)
	}
	if !bad[envPartition] && c.SchedulingCredit < c.PartitionBytes {
		fail(envCredit, "a credit of %d bytes is less than one partition of %d bytes (%s); "+
			"values from 1 to %d count partitions, larger ones count bytes",
			c.SchedulingCredit, c.PartitionBytes, envPartition, creditCountMax)
	}
	inRange(envEngineThreads, c.EngineThreads, 1, maxEngineThreads)
	if c.Async {
		fail(envAsync, "asynchronous mode is not implemented yet")
	}
	if c.TraceOn && c.TraceDir == "" {
		fail(envTraceDir, "must be set when %s=1", envTraceOn)
	}
	if !slices.Contains(logLevels, c.LogLevel) {
		fail(envLogLevel, "must be one of %s", strings.Join(logLevels, ", "))
	}
	if c.LogFormat != "" && c.LogFormat != LogConsole && c.LogFormat != LogJSON {
		fail(envLogFormat, "must be %s or %s", LogConsole, LogJSON)
	}
	if c.HeartbeatInterval <= 0 {
		fail(envHBInterval, "must be positive")
	}
	if c.HeartbeatTimeout <= 0 {
		fail(envHBTimeout, "must be positive")
	} else if !bad[envHBInterval] && c.HeartbeatTimeout <= c.HeartbeatInterval {
		fail(envHBTimeout, "must be longer than %s (%v)", envHBInterval, c.HeartbeatInterval)
	}
	inRange(envLanes, c.Lanes, 1, maxLanes)
	inRange(envServerPort, c.ServerPort, 0, math.MaxUint16)
	c.validateRDMA(fail, inRange)
	switch c.GPU {
	case "auto", "off":
	default:
		fail(envGPU, "must be auto or off")
	}
	if c.ServerMemory < 0 {
		fail(envServerMemory, "must not be negative (0 means a share of the machine's memory)")
	}
	if c.HelloTimeout <= 0 {
		fail(envHelloTimeout, "must be positive")
	}
	if c.DeclareWarn < 0 {
		fail(envDeclareWarn, "must not be negative (0 turns the notice off)")
	}
	if c.DeclareTimeout < 0 {
		fail(envDeclareTO, "must not be negative (0 turns the timeout off)")
	}
	if c.StallWarning < 0 {
		fail(envStallWarn, "must not be negative (0 turns the report off)")
	}
	if c.Progress < 0 || (c.Progress > 0 && c.Progress < 100*time.Millisecond) {
		fail(envProgress, "must be 0 (off) or at least 100ms")
	}
	if c.StallShutdown < 0 {
		fail(envStallShut, "must not be negative (0 never ends the job)")
	}
	if c.GPUTimeout <= 0 {
		fail(envGPUTimeout, "must be positive")
	}
	c.validateAuth(fail)
	if c.MetricsAddr != "" {
		if _, port, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			fail(envMetricsAddr, "must be host:port, such as 127.0.0.1:9100 or :9100")
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > math.MaxUint16 {
			fail(envMetricsAddr, "port must be a number from 0 to 65535")
		}
	}
}

// validateAuth checks the secret and TLS variables (the files' contents
// are read by Auth).
func (c *Config) validateAuth(fail func(name, format string, args ...any)) {
	switch {
	case c.Secret != "" && c.SecretFile != "":
		fail(envSecretFile, "is set together with %s: set one of them", envSecret)
	case c.Secret != "" && len(c.Secret) < MinSecretLen:
		fail(envSecret, "is %d characters long; use at least %d (bpsrun --local makes a random one)", len(c.Secret), MinSecretLen)
	case c.SecretFile != "":
		if _, err := readSecretFile(c.SecretFile); err != nil {
			fail(envSecretFile, "%v", err)
		}
	}
	set := 0
	for _, v := range []string{c.TLSCert, c.TLSKey, c.TLSCA} {
		if v != "" {
			set++
		}
	}
	if set != 0 && set != 3 {
		fail(envTLSCert, "%s, %s and %s go together: set all three or none", envTLSCert, envTLSKey, envTLSCA)
	}
}

// readSecretFile reads a secret from a file that only its owner may read.
func readSecretFile(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s has mode %v: others may read it; chmod 600 it", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	secret := strings.TrimRight(string(b), "\r\n")
	if len(secret) < MinSecretLen {
		return "", fmt.Errorf("%s holds a secret of %d characters; use at least %d", path, len(secret), MinSecretLen)
	}
	return secret, nil
}

// Auth returns how this process's connections authenticate: nil when the
// job has neither a secret nor TLS. It reads the secret file and the TLS
// files.
func (c *Config) Auth() (*auth.Config, error) {
	secret := c.Secret
	if c.SecretFile != "" {
		var err error
		if secret, err = readSecretFile(c.SecretFile); err != nil {
			return nil, fmt.Errorf("config: %s: %w", envSecretFile, err)
		}
	}
	a := &auth.Config{Secret: []byte(secret)}
	if c.TLSCert != "" || c.TLSKey != "" || c.TLSCA != "" {
		t, err := auth.LoadTLS(c.TLSCert, c.TLSKey, c.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("config: %s/%s/%s: %w", envTLSCert, envTLSKey, envTLSCA, err)
		}
		a.TLS = t
	}
	if !a.Enabled() {
		return nil, nil
	}
	return a, nil
}

// validateRDMA checks the RDMA variables; fail and inRange are validate's.
func (c *Config) validateRDMA(fail func(name, format string, args ...any), inRange func(name string, v, lo, hi int)) {
	if c.EnableRDMA != "" && c.EnableRDMA != "0" && c.EnableRDMA != "1" {
		fail(envEnableRDMA, "must be 1 (require RDMA) or 0 (use TCP); leave it unset to use RDMA when a device is usable")
	}
	switch c.DMLCEnableRDMA {
	case "", "0", "ibverbs":
	default:
		fail(envDMLCRDMA, "must be ibverbs (or 1) or 0: ibverbs is the only RDMA transport gobps has")
	}
	if c.EnableRDMA == "0" && c.DMLCEnableRDMA == "ibverbs" {
		fail(envEnableRDMA, "contradicts %s=%s, which requires RDMA", envDMLCRDMA, c.DMLCEnableRDMA)
	}
	if strings.ContainsFunc(c.RDMADevice, func(r rune) bool { return r <= ' ' || r == '/' || r == 0x7f }) {
		fail(envRDMADevice, "must be a device name such as mlx5_0 (no slashes or white space)")
	}
	if c.RDMAGIDIndex < -1 {
		fail(envRDMAGIDIndex, "must be at least 0, or auto")
	} else if c.RDMAGIDIndex > maxGIDIndex {
		fail(envRDMAGIDIndex, "must be at most %d", maxGIDIndex)
	}
	inRange(envRDMASend, c.RDMASendDepth, 1, maxRDMADepth)
	inRange(envRDMARecv, c.RDMARecvDepth, 1, maxRDMADepth)
	if c.RDMAMRCacheBytes < minMRCacheSize {
		fail(envRDMAMRCache, "must be at least %d", minMRCacheSize)
	}
}

// RDMAMode says how the transport is chosen, from BYTEPS_ENABLE_RDMA and
// DMLC_ENABLE_RDMA: "force" (verbs or an error), "off" (TCP) or "auto"
// (verbs when a usable device exists, else TCP). The values are those of
// rdma.Mode, with "auto" for its zero value.
func (c *Config) RDMAMode() string {
	switch {
	case c.EnableRDMA == "1" || c.DMLCEnableRDMA == "ibverbs":
		return "force"
	case c.EnableRDMA == "0":
		return "off"
	}
	return "auto"
}

// normalizeSwitch maps the accepted spellings of an on/off variable to
// "0" and on, and leaves anything else for validate to refuse.
func normalizeSwitch(v, on string) string {
	switch strings.ToLower(v) {
	case "0", "false":
		return "0"
	case "1", "true", on:
		return on
	}
	return v
}

// NumWorkerProcs returns the number of worker processes that push:
// NumWorker × LocalSize.
func (c *Config) NumWorkerProcs() int { return c.NumWorker * c.LocalSize }

// PushesPerRound is how many pushes a server gets per sum key per round:
// one per machine (DMLC_NUM_WORKER) with local aggregation, one per worker
// process without.
func (c *Config) PushesPerRound() int {
	if c.LocalAggregation {
		return c.NumWorker
	}
	return c.NumWorkerProcs()
}

// RootAddr returns the coordinator's address, host:port.
func (c *Config) RootAddr() string {
	return net.JoinHostPort(c.RootURI, strconv.Itoa(c.RootPort))
}

// Environ returns "NAME=value" for every variable of the contract, in the
// order of Variables, so that a launcher can hand this configuration to a
// child process: Parse of the result gives back an equal Config. A variable
// with no value (DMLC_WORKER_ID -1, an empty DMLC_INTERFACE or
// DMLC_NODE_HOST) is written as "NAME=", which Parse reads as unset and which
// overrides any value the child would otherwise inherit.
func (c *Config) Environ() []string {
	out := make([]string, len(table))
	for i, s := range table {
		v := formatValue(s.field(c))
		if (s.Name == envWorkerID && c.WorkerID == -1) || (s.Name == envServerID && c.ServerID == -1) {
			v = "" // unset
		}
		if s.Name == envRDMAGIDIndex && c.RDMAGIDIndex == -1 {
			v = rdmaAuto
		}
		out[i] = s.Name + "=" + v
	}
	return out
}

// parseValue parses v (trimmed, not empty) into the field p points at.
func parseValue(p any, v string) error {
	switch p := p.(type) {
	case *int:
		n, err := strconv.Atoi(v)
		if err != nil {
			if errors.Is(err, strconv.ErrRange) {
				return errors.New("integer out of range")
			}
			return errors.New("not an integer")
		}
		*p = n
	case *string:
		*p = v
	case *Role:
		*p = Role(v)
	case *bool:
		switch strings.ToLower(v) {
		case "1", "true":
			*p = true
		case "0", "false":
			*p = false
		default:
			return errors.New("not a boolean (use 0, 1, true or false)")
		}
	case *time.Duration:
		d, err := parseDuration(v)
		if err != nil {
			return err
		}
		*p = d
	default:
		// Only reachable if the table names a field of an unhandled type,
		// which TestVariablesTable rules out.
		return fmt.Errorf("unsupported field type %T", p)
	}
	return nil
}

// formatValue writes the field p points at the way parseValue reads it.
func formatValue(p any) string {
	switch p := p.(type) {
	case *int:
		return strconv.Itoa(*p)
	case *string:
		return *p
	case *Role:
		return string(*p)
	case *bool:
		if *p {
			return "1"
		}
		return "0"
	case *time.Duration:
		return p.String()
	}
	return fmt.Sprint(p)
}

// parseDuration reads a Go duration ("500ms") or a number of seconds ("0.5").
func parseDuration(v string) (time.Duration, error) {
	if d, err := time.ParseDuration(v); err == nil {
		return d, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, errors.New(`not a duration (use Go syntax such as "500ms" or "5s", or a number of seconds)`)
	}
	ns := math.Round(f * float64(time.Second))
	if ns >= math.MaxInt64 || ns <= math.MinInt64 {
		return 0, errors.New("duration out of range")
	}
	return time.Duration(ns), nil
}

// checkHost accepts a host name or an IP address, but not one with a port,
// brackets or white space.
func checkHost(h string) error {
	if strings.ContainsFunc(h, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return errors.New("must be a host name or IP address (it contains white space or control characters)")
	}
	if strings.ContainsAny(h, "[]/") || (strings.Contains(h, ":") && net.ParseIP(h) == nil) {
		return errors.New("must be a host name or IP address, without a port, brackets or scheme")
	}
	return nil
}

func requiredErr(s spec) error {
	return fmt.Errorf("config: %s is required (%s)", s.Name, s.what)
}

func valueErr(name, v, problem string) error {
	return fmt.Errorf("config: %s=%q: %s", name, v, problem)
}

// specFor returns the table row for name, which must be in the table.
func specFor(name string) spec {
	for _, s := range table {
		if s.Name == name {
			return s
		}
	}
	panic("config: no variable " + name) // programmer error: names are constants
}

// satMul returns a×b for non-negative a and b, or math.MaxInt if that
// overflows.
func satMul(a, b int) int {
	if a != 0 && b > math.MaxInt/a {
		return math.MaxInt
	}
	return a * b
}

// problems collects errors and joins them in table order, so a user sees
// them in the order of docs/env.md whatever order they were found in.
type problems struct {
	list []problem
}

type problem struct {
	index int
	err   error
}

func (p *problems) add(name string, err error) {
	idx := slices.IndexFunc(table, func(s spec) bool { return s.Name == name })
	p.list = append(p.list, problem{idx, err})
}

func (p *problems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	slices.SortStableFunc(p.list, func(a, b problem) int { return cmp.Compare(a.index, b.index) })
	errs := make([]error, len(p.list))
	for i, q := range p.list {
		errs[i] = q.err
	}
	return errors.Join(errs...)
}

// LocalOnly reports whether a push_pull's sum is complete after this
// machine's local aggregation: every worker of the job is on this machine
// (one machine of several workers, local aggregation on), and
// BYTEPS_FORCE_DISTRIBUTED does not ask for the servers.
func (c *Config) LocalOnly() bool {
	return c.NumWorker == 1 && c.LocalSize >= 2 && c.LocalAggregation && !c.ForceDistributed
}
