//go:build cgo && !noverbs

package ibv

/*
#cgo LDFLAGS: -ldl
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <infiniband/verbs.h>

// The library's exported functions, found with dlsym by gobps_ibv_load.
// Nothing below names an exported ibv_* symbol directly, so the binary needs
// no libibverbs at link time (-ldl only): TestNoVerbsSymbolsLinked checks.
// The data-path calls (ibv_post_send, ibv_post_recv, ibv_poll_cq,
// ibv_req_notify_cq) are static inline in verbs.h: they jump through
// context->ops and need no symbol.
struct gobps_ibv {
	struct ibv_device **(*get_device_list)(int *);
	void (*free_device_list)(struct ibv_device **);
	const char *(*get_device_name)(struct ibv_device *);
	struct ibv_context *(*open_device)(struct ibv_device *);
	int (*close_device)(struct ibv_context *);
	int (*query_device)(struct ibv_context *, struct ibv_device_attr *);
	int (*query_port)(struct ibv_context *, uint8_t, struct _compat_ibv_port_attr *);
	int (*query_gid)(struct ibv_context *, uint8_t, int, union ibv_gid *);
	struct ibv_pd *(*alloc_pd)(struct ibv_context *);
	int (*dealloc_pd)(struct ibv_pd *);
	struct ibv_mr *(*reg_mr)(struct ibv_pd *, void *, size_t, int);
	int (*dereg_mr)(struct ibv_mr *);
	struct ibv_comp_channel *(*create_comp_channel)(struct ibv_context *);
	int (*destroy_comp_channel)(struct ibv_comp_channel *);
	struct ibv_cq *(*create_cq)(struct ibv_context *, int, void *, struct ibv_comp_channel *, int);
	int (*destroy_cq)(struct ibv_cq *);
	int (*get_cq_event)(struct ibv_comp_channel *, struct ibv_cq **, void **);
	void (*ack_cq_events)(struct ibv_cq *, unsigned int);
	struct ibv_qp *(*create_qp)(struct ibv_pd *, struct ibv_qp_init_attr *);
	int (*modify_qp)(struct ibv_qp *, struct ibv_qp_attr *, int);
	int (*destroy_qp)(struct ibv_qp *);
	const char *(*wc_status_str)(enum ibv_wc_status);
};

static struct gobps_ibv gobps_fn;

// gobps_ibv_load opens libibverbs.so.1 and fills gobps_fn. It returns NULL,
// or a malloc'd error message.
static char *gobps_ibv_load(void) {
	void *h = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_GLOBAL);
	if (!h) {
		const char *e = dlerror();
		return strdup(e ? e : "libibverbs.so.1: dlopen failed");
	}
#define GOBPS_SYM(field, name)                                              \
	do {                                                                \
		*(void **)(&gobps_fn.field) = dlsym(h, name);               \
		if (!gobps_fn.field)                                        \
			return strdup("libibverbs.so.1 has no symbol " name); \
	} while (0)
	GOBPS_SYM(get_device_list, "ibv_get_device_list");
	GOBPS_SYM(free_device_list, "ibv_free_device_list");
	GOBPS_SYM(get_device_name, "ibv_get_device_name");
	GOBPS_SYM(open_device, "ibv_open_device");
	GOBPS_SYM(close_device, "ibv_close_device");
	GOBPS_SYM(query_device, "ibv_query_device");
	GOBPS_SYM(query_port, "ibv_query_port");
	GOBPS_SYM(query_gid, "ibv_query_gid");
	GOBPS_SYM(alloc_pd, "ibv_alloc_pd");
	GOBPS_SYM(dealloc_pd, "ibv_dealloc_pd");
	GOBPS_SYM(reg_mr, "ibv_reg_mr");
	GOBPS_SYM(dereg_mr, "ibv_dereg_mr");
	GOBPS_SYM(create_comp_channel, "ibv_create_comp_channel");
	GOBPS_SYM(destroy_comp_channel, "ibv_destroy_comp_channel");
	GOBPS_SYM(create_cq, "ibv_create_cq");
	GOBPS_SYM(destroy_cq, "ibv_destroy_cq");
	GOBPS_SYM(get_cq_event, "ibv_get_cq_event");
	GOBPS_SYM(ack_cq_events, "ibv_ack_cq_events");
	GOBPS_SYM(create_qp, "ibv_create_qp");
	GOBPS_SYM(modify_qp, "ibv_modify_qp");
	GOBPS_SYM(destroy_qp, "ibv_destroy_qp");
	GOBPS_SYM(wc_status_str, "ibv_wc_status_str");
#undef GOBPS_SYM
	return NULL;
}

// Device list. The list stays allocated until gobps_free_devices.
static struct ibv_device **gobps_devices(int *n) { return gobps_fn.get_device_list(n); }
static void gobps_free_devices(struct ibv_device **l) { gobps_fn.free_device_list(l); }
static const char *gobps_device_name(struct ibv_device **l, int i) { return gobps_fn.get_device_name(l[i]); }
static struct ibv_context *gobps_open(struct ibv_device **l, int i) { return gobps_fn.open_device(l[i]); }
static int gobps_close(struct ibv_context *c) { return gobps_fn.close_device(c); }

static int gobps_query_device(struct ibv_context *c, struct ibv_device_attr *a) {
	return gobps_fn.query_device(c, a);
}

// gobps_query_port is verbs.h's ___ibv_query_port with the exported
// function taken from the table: the provider's extended query when it has
// one, else the compat entry point into a zeroed struct.
static int gobps_query_port(struct ibv_context *c, uint8_t port, struct ibv_port_attr *a) {
	struct verbs_context *vctx = verbs_get_ctx_op(c, query_port);
	if (!vctx) {
		memset(a, 0, sizeof(*a));
		return gobps_fn.query_port(c, port, (struct _compat_ibv_port_attr *)a);
	}
	return vctx->query_port(c, port, a, sizeof(*a));
}

static int gobps_query_gid(struct ibv_context *c, uint8_t port, int index, uint8_t *out) {
	union ibv_gid g;
	int rc = gobps_fn.query_gid(c, port, index, &g);
	if (rc == 0)
		memcpy(out, g.raw, 16);
	return rc;
}

static struct ibv_pd *gobps_alloc_pd(struct ibv_context *c) { return gobps_fn.alloc_pd(c); }
static int gobps_dealloc_pd(struct ibv_pd *pd) { return gobps_fn.dealloc_pd(pd); }

static struct ibv_mr *gobps_reg_mr(struct ibv_pd *pd, uintptr_t addr, size_t len, int access) {
	return gobps_fn.reg_mr(pd, (void *)addr, len, access);
}
static int gobps_dereg_mr(struct ibv_mr *mr) { return gobps_fn.dereg_mr(mr); }

// gobps_create_channel creates a completion channel with a non-blocking fd,
// so that ibv_get_cq_event never blocks a thread (callers poll the fd).
static struct ibv_comp_channel *gobps_create_channel(struct ibv_context *c) {
	struct ibv_comp_channel *ch = gobps_fn.create_comp_channel(c);
	if (!ch)
		return NULL;
	int fl = fcntl(ch->fd, F_GETFL);
	if (fl < 0 || fcntl(ch->fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		int e = errno;
		gobps_fn.destroy_comp_channel(ch);
		errno = e;
		return NULL;
	}
	return ch;
}
static int gobps_destroy_channel(struct ibv_comp_channel *ch) { return gobps_fn.destroy_comp_channel(ch); }
static int gobps_channel_fd(struct ibv_comp_channel *ch) { return ch->fd; }

// gobps_get_event takes one event off the channel and acknowledges it.
// Returns 0, or -1 with errno (EAGAIN: none pending).
static int gobps_get_event(struct ibv_comp_channel *ch) {
	struct ibv_cq *cq;
	void *ctx;
	if (gobps_fn.get_cq_event(ch, &cq, &ctx))
		return -1;
	gobps_fn.ack_cq_events(cq, 1);
	return 0;
}

static struct ibv_cq *gobps_create_cq(struct ibv_context *c, int n, struct ibv_comp_channel *ch) {
	return gobps_fn.create_cq(c, n, NULL, ch, 0);
}
static int gobps_destroy_cq(struct ibv_cq *cq) { return gobps_fn.destroy_cq(cq); }
static int gobps_notify_cq(struct ibv_cq *cq) { return ibv_req_notify_cq(cq, 0); }

// gobps_wc is the part of a struct ibv_wc Go reads, with the immediate data
// in host byte order.
struct gobps_wc {
	uint64_t wr_id;
	uint32_t status, opcode, vendor_err, byte_len, imm, has_imm, qp_num;
};

static int gobps_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *tmp, struct gobps_wc *out) {
	int got = ibv_poll_cq(cq, n, tmp);
	for (int i = 0; i < got; i++) {
		out[i].wr_id = tmp[i].wr_id;
		out[i].status = tmp[i].status;
		out[i].opcode = tmp[i].opcode;
		out[i].vendor_err = tmp[i].vendor_err;
		out[i].byte_len = tmp[i].byte_len;
		out[i].has_imm = (tmp[i].wc_flags & IBV_WC_WITH_IMM) != 0;
		out[i].imm = out[i].has_imm ? ntohl(tmp[i].imm_data) : 0;
		out[i].qp_num = tmp[i].qp_num;
	}
	return got;
}

static const char *gobps_status_str(int status) { return gobps_fn.wc_status_str((enum ibv_wc_status)status); }

static struct ibv_qp *gobps_create_qp(struct ibv_pd *pd, struct ibv_cq *cq, uint32_t sw, uint32_t rw,
				      uint32_t inl, uint32_t *got_inline) {
	struct ibv_qp_init_attr a;
	memset(&a, 0, sizeof a);
	a.send_cq = cq;
	a.recv_cq = cq;
	a.qp_type = IBV_QPT_RC;
	a.cap.max_send_wr = sw;
	a.cap.max_recv_wr = rw;
	a.cap.max_send_sge = 1;
	a.cap.max_recv_sge = 1;
	a.cap.max_inline_data = inl;
	struct ibv_qp *qp = gobps_fn.create_qp(pd, &a);
	if (qp)
		*got_inline = a.cap.max_inline_data;
	return qp;
}
static int gobps_destroy_qp(struct ibv_qp *qp) { return gobps_fn.destroy_qp(qp); }
static uint32_t gobps_qp_num(struct ibv_qp *qp) { return qp->qp_num; }

static int gobps_qp_init(struct ibv_qp *qp, uint8_t port, int access) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_INIT;
	a.pkey_index = 0;
	a.port_num = port;
	a.qp_access_flags = access;
	return gobps_fn.modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
}

static int gobps_qp_rtr(struct ibv_qp *qp, uint8_t port, int mtu, uint32_t dqpn, uint32_t rq_psn,
			uint16_t dlid, int global, const uint8_t *dgid, int sgid_index, uint8_t hop_limit,
			uint8_t min_rnr_timer) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTR;
	a.path_mtu = (enum ibv_mtu)mtu;
	a.dest_qp_num = dqpn;
	a.rq_psn = rq_psn;
	a.max_dest_rd_atomic = 1;
	a.min_rnr_timer = min_rnr_timer;
	a.ah_attr.dlid = dlid;
	a.ah_attr.sl = 0;
	a.ah_attr.src_path_bits = 0;
	a.ah_attr.port_num = port;
	if (global) {
		a.ah_attr.is_global = 1;
		memcpy(a.ah_attr.grh.dgid.raw, dgid, 16);
		a.ah_attr.grh.sgid_index = sgid_index;
		a.ah_attr.grh.hop_limit = hop_limit;
		a.ah_attr.grh.traffic_class = 0;
		a.ah_attr.grh.flow_label = 0;
	}
	return gobps_fn.modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
					      IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
}

static int gobps_qp_rts(struct ibv_qp *qp, uint32_t sq_psn, uint8_t timeout, uint8_t retry, uint8_t rnr_retry) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTS;
	a.sq_psn = sq_psn;
	a.timeout = timeout;
	a.retry_cnt = retry;
	a.rnr_retry = rnr_retry;
	a.max_rd_atomic = 1;
	return gobps_fn.modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
					      IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC);
}

static int gobps_qp_err(struct ibv_qp *qp) {
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_ERR;
	return gobps_fn.modify_qp(qp, &a, IBV_QP_STATE);
}

static int gobps_post_send(struct ibv_qp *qp, uint64_t id, int op, int flags, uint64_t addr, uint32_t len,
			   uint32_t lkey, uint64_t raddr, uint32_t rkey, uint32_t imm) {
	struct ibv_sge sge = {.addr = addr, .length = len, .lkey = lkey};
	struct ibv_send_wr wr, *bad = NULL;
	memset(&wr, 0, sizeof wr);
	wr.wr_id = id;
	wr.opcode = (enum ibv_wr_opcode)op;
	wr.send_flags = flags;
	if (len > 0) {
		wr.sg_list = &sge;
		wr.num_sge = 1;
	}
	wr.imm_data = htonl(imm);
	wr.wr.rdma.remote_addr = raddr;
	wr.wr.rdma.rkey = rkey;
	return ibv_post_send(qp, &wr, &bad);
}

static int gobps_post_recv(struct ibv_qp *qp, uint64_t id, uint64_t addr, uint32_t len, uint32_t lkey) {
	struct ibv_sge sge = {.addr = addr, .length = len, .lkey = lkey};
	struct ibv_recv_wr wr, *bad = NULL;
	memset(&wr, 0, sizeof wr);
	wr.wr_id = id;
	wr.sg_list = &sge;
	wr.num_sge = 1;
	return ibv_post_recv(qp, &wr, &bad);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Compile-time checks that the Go constants are verbs.h's values: each line
// overflows uint (a compile error) unless both sides are equal.
const (
	_ = uint(C.IBV_WR_RDMA_WRITE-int(OpWrite)) + uint(int(OpWrite)-C.IBV_WR_RDMA_WRITE)
	_ = uint(C.IBV_WR_RDMA_WRITE_WITH_IMM-int(OpWriteWithImm)) + uint(int(OpWriteWithImm)-C.IBV_WR_RDMA_WRITE_WITH_IMM)
	_ = uint(C.IBV_WR_SEND-int(OpSend)) + uint(int(OpSend)-C.IBV_WR_SEND)
	_ = uint(C.IBV_WR_SEND_WITH_IMM-int(OpSendWithImm)) + uint(int(OpSendWithImm)-C.IBV_WR_SEND_WITH_IMM)
	_ = uint(C.IBV_WC_SEND-int(WCSend)) + uint(int(WCSend)-C.IBV_WC_SEND)
	_ = uint(C.IBV_WC_RDMA_WRITE-int(WCWrite)) + uint(int(WCWrite)-C.IBV_WC_RDMA_WRITE)
	_ = uint(C.IBV_WC_RECV-int(WCRecv)) + uint(int(WCRecv)-C.IBV_WC_RECV)
	_ = uint(C.IBV_WC_RECV_RDMA_WITH_IMM-int(WCRecvWriteWithImm)) + uint(int(WCRecvWriteWithImm)-C.IBV_WC_RECV_RDMA_WITH_IMM)
	_ = uint(C.IBV_WC_WR_FLUSH_ERR-int(StatusFlushErr)) + uint(int(StatusFlushErr)-C.IBV_WC_WR_FLUSH_ERR)
	_ = uint(C.IBV_WC_RETRY_EXC_ERR-int(StatusRetryExcErr)) + uint(int(StatusRetryExcErr)-C.IBV_WC_RETRY_EXC_ERR)
	_ = uint(C.IBV_WC_RNR_RETRY_EXC_ERR-int(StatusRNRRetryExc)) + uint(int(StatusRNRRetryExc)-C.IBV_WC_RNR_RETRY_EXC_ERR)
	_ = uint(C.IBV_WC_GENERAL_ERR-int(StatusGeneralErr)) + uint(int(StatusGeneralErr)-C.IBV_WC_GENERAL_ERR)
	_ = uint(C.IBV_PORT_ACTIVE-int(PortActive)) + uint(int(PortActive)-C.IBV_PORT_ACTIVE)
	_ = uint(C.IBV_LINK_LAYER_ETHERNET-int(LinkEthernet)) + uint(int(LinkEthernet)-C.IBV_LINK_LAYER_ETHERNET)
	_ = uint(C.IBV_MTU_4096-int(MTU4096)) + uint(int(MTU4096)-C.IBV_MTU_4096)
	_ = uint(C.IBV_ACCESS_REMOTE_WRITE-int(AccessRemoteWrite)) + uint(int(AccessRemoteWrite)-C.IBV_ACCESS_REMOTE_WRITE)
	_ = uint(C.IBV_ACCESS_LOCAL_WRITE-int(AccessLocalWrite)) + uint(int(AccessLocalWrite)-C.IBV_ACCESS_LOCAL_WRITE)
)

// Built reports whether this binary contains the real binding (it was built
// with cgo and without the noverbs tag).
const Built = true

var (
	loadOnce sync.Once
	loadErr  error
)

// Load opens libibverbs.so.1 with dlopen and looks up every function the
// binding calls. It is safe to call many times; the library is loaded once
// and never unloaded. Where the library is missing, the error wraps
// ErrNotSupported and carries dlerror's text.
func Load() (Library, error) {
	loadOnce.Do(func() {
		if msg := C.gobps_ibv_load(); msg != nil {
			loadErr = fmt.Errorf("%w: %s", ErrNotSupported, C.GoString(msg))
			C.free(unsafe.Pointer(msg))
		}
	})
	if loadErr != nil {
		return nil, loadErr
	}
	return lib{}, nil
}

// lib is the loaded libibverbs.
type lib struct{}

// errnoOf turns what a verbs call returned into an Errno: int-returning
// verbs return the errno value itself (or -1 with errno set).
func errnoOf(rc C.int, err error) syscall.Errno {
	if rc > 0 {
		return syscall.Errno(rc)
	}
	var en syscall.Errno
	if errors.As(err, &en) && en != 0 {
		return en
	}
	return syscall.EIO
}

// ptrErr is the errno of a verbs call that returned NULL.
func ptrErr(op string, err error, detail string) *Error {
	var en syscall.Errno
	if !errors.As(err, &en) {
		en = 0
	}
	return &Error{Op: op, Errno: en, Detail: detail}
}

// deviceListErr explains a failed ibv_get_device_list. ENOSYS is what
// libibverbs says when the kernel has no RDMA support at all.
func deviceListErr(err error) error {
	e := ptrErr("ibv_get_device_list", err, "")
	if e.Errno == syscall.ENOSYS {
		e.Detail = "the kernel offers no verbs devices: /sys/class/infiniband_verbs is missing or empty"
	}
	return e
}

func (lib) Devices() ([]string, error) {
	var n C.int
	l, err := C.gobps_devices(&n)
	if l == nil {
		return nil, deviceListErr(err)
	}
	defer C.gobps_free_devices(l)
	names := make([]string, 0, int(n))
	for i := 0; i < int(n); i++ {
		names = append(names, C.GoString(C.gobps_device_name(l, C.int(i))))
	}
	return names, nil
}

func (lib) Open(name string) (Context, error) {
	var n C.int
	l, err := C.gobps_devices(&n)
	if l == nil {
		return nil, deviceListErr(err)
	}
	defer C.gobps_free_devices(l)
	for i := 0; i < int(n); i++ {
		if C.GoString(C.gobps_device_name(l, C.int(i))) != name {
			continue
		}
		c, err := C.gobps_open(l, C.int(i))
		if c == nil {
			return nil, ptrErr("ibv_open_device", err, name)
		}
		return &context{c: c, name: name}, nil
	}
	return nil, fmt.Errorf("ibv_open_device: no device %q", name)
}

type context struct {
	c    *C.struct_ibv_context
	name string
}

func (c *context) Name() string { return c.name }

func (c *context) Close() error {
	if rc, err := C.gobps_close(c.c); rc != 0 {
		return &Error{Op: "ibv_close_device", Errno: errnoOf(rc, err), Detail: c.name}
	}
	return nil
}

func (c *context) Query() (DeviceAttr, error) {
	var a C.struct_ibv_device_attr
	if rc, err := C.gobps_query_device(c.c, &a); rc != 0 {
		return DeviceAttr{}, &Error{Op: "ibv_query_device", Errno: errnoOf(rc, err), Detail: c.name}
	}
	return DeviceAttr{
		PhysPortCnt: int(a.phys_port_cnt), MaxQPWR: int(a.max_qp_wr), MaxCQE: int(a.max_cqe),
		MaxMRSize: uint64(a.max_mr_size), MaxSGE: int(a.max_sge),
	}, nil
}

func (c *context) Port(port int) (PortAttr, error) {
	var a C.struct_ibv_port_attr
	if rc, err := C.gobps_query_port(c.c, C.uint8_t(port), &a); rc != 0 {
		return PortAttr{}, &Error{Op: "ibv_query_port", Errno: errnoOf(rc, err), Detail: fmt.Sprintf("%s port %d", c.name, port)}
	}
	return PortAttr{
		State: PortState(a.state), ActiveMTU: MTU(a.active_mtu), LID: uint16(a.lid),
		LinkLayer: LinkLayer(a.link_layer), GIDTblLen: int(a.gid_tbl_len), MaxMsgSz: uint32(a.max_msg_sz),
	}, nil
}

func (c *context) GID(port, index int) (GID, error) {
	var g GID
	if rc, err := C.gobps_query_gid(c.c, C.uint8_t(port), C.int(index), (*C.uint8_t)(unsafe.Pointer(&g[0]))); rc != 0 {
		return GID{}, &Error{Op: "ibv_query_gid", Errno: errnoOf(rc, err), Detail: fmt.Sprintf("%s port %d index %d", c.name, port, index)}
	}
	return g, nil
}

// GIDType reads /sys/class/infiniband/DEV/ports/PORT/gid_attrs/types/INDEX.
func (c *context) GIDType(port, index int) string {
	b, err := os.ReadFile(filepath.Join("/sys/class/infiniband", c.name, "ports", strconv.Itoa(port),
		"gid_attrs", "types", strconv.Itoa(index)))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (c *context) AllocPD() (PD, error) {
	p, err := C.gobps_alloc_pd(c.c)
	if p == nil {
		return nil, ptrErr("ibv_alloc_pd", err, c.name)
	}
	return &pd{p: p, ctx: c}, nil
}

func (c *context) NewCompChannel() (CompChannel, error) {
	ch, err := C.gobps_create_channel(c.c)
	if ch == nil {
		return nil, ptrErr("ibv_create_comp_channel", err, c.name)
	}
	// Wait on a duplicate of the channel's fd through Go's netpoller, so a
	// waiting goroutine holds no OS thread. (The duplicate shares the open
	// file: readiness is the channel's; the library keeps its own fd.)
	fd, err := unix.FcntlInt(uintptr(C.gobps_channel_fd(ch)), unix.F_DUPFD_CLOEXEC, 0)
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		C.gobps_destroy_channel(ch)
		return nil, fmt.Errorf("completion channel: dup its fd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "ibv-comp-channel")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		C.gobps_destroy_channel(ch)
		return nil, fmt.Errorf("completion channel: %w", err)
	}
	return &channel{ch: ch, f: f, rc: rc}, nil
}

func (c *context) NewCQ(size int, ch CompChannel) (CQ, error) {
	var cch *C.struct_ibv_comp_channel
	if ch != nil {
		cch = ch.(*channel).ch
	}
	q, err := C.gobps_create_cq(c.c, C.int(size), cch)
	if q == nil {
		return nil, ptrErr("ibv_create_cq", err, fmt.Sprintf("%d entries", size))
	}
	const batch = 64
	return &cq{
		q:   q,
		tmp: (*C.struct_ibv_wc)(C.calloc(batch, C.size_t(unsafe.Sizeof(C.struct_ibv_wc{})))),
		out: (*C.struct_gobps_wc)(C.calloc(batch, C.size_t(unsafe.Sizeof(C.struct_gobps_wc{})))),
		n:   batch,
	}, nil
}

type pd struct {
	p   *C.struct_ibv_pd
	ctx *context
}

func (p *pd) Close() error {
	if rc, err := C.gobps_dealloc_pd(p.p); rc != 0 {
		return &Error{Op: "ibv_dealloc_pd", Errno: errnoOf(rc, err)}
	}
	return nil
}

func (p *pd) Register(b []byte, access Access) (MR, error) {
	if len(b) == 0 {
		return nil, &Error{Op: "ibv_reg_mr", Errno: syscall.EINVAL, Detail: "empty buffer"}
	}
	m := &mr{b: b}
	// The NIC reads and writes this memory until ibv_dereg_mr; keep the
	// garbage collector's hands off it for that long. (Pin does nothing to
	// memory Go does not own, such as a C caller's buffer.)
	m.pin.Pin(&b[0])
	r, err := C.gobps_reg_mr(p.p, C.uintptr_t(uintptr(unsafe.Pointer(&b[0]))), C.size_t(len(b)), C.int(access))
	if r == nil {
		m.pin.Unpin()
		e := ptrErr("ibv_reg_mr", err, sizeString(uint64(len(b))))
		if e.Errno == syscall.ENOMEM || e.Errno == syscall.EPERM || e.Errno == syscall.EAGAIN {
			var rl unix.Rlimit
			if unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl) == nil {
				e.Detail = memlockDetail(len(b), rl.Cur, "")
			}
		}
		return nil, e
	}
	m.r = r
	return m, nil
}

type mr struct {
	r   *C.struct_ibv_mr
	b   []byte
	pin runtime.Pinner
}

func (m *mr) Addr() uint64 { return uint64(uintptr(m.r.addr)) }
func (m *mr) Len() int     { return len(m.b) }
func (m *mr) LKey() uint32 { return uint32(m.r.lkey) }
func (m *mr) RKey() uint32 { return uint32(m.r.rkey) }

func (m *mr) Deregister() error {
	if rc, err := C.gobps_dereg_mr(m.r); rc != 0 {
		return &Error{Op: "ibv_dereg_mr", Errno: errnoOf(rc, err), Detail: sizeString(uint64(len(m.b)))}
	}
	m.pin.Unpin()
	m.b = nil
	return nil
}

type channel struct {
	ch *C.struct_ibv_comp_channel
	f  *os.File // a duplicate of ch's fd, in Go's netpoller
	rc syscall.RawConn
}

func (c *channel) Fd() int { return int(C.gobps_channel_fd(c.ch)) }

func (c *channel) Wait(timeout time.Duration) (bool, error) {
	if err := c.f.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return false, fmt.Errorf("completion channel: %w", err)
	}
	var got bool
	var evErr error
	err := c.rc.Read(func(uintptr) bool {
		rc, err := C.gobps_get_event(c.ch)
		switch {
		case rc == 0:
			got = true
		case errors.Is(err, syscall.EAGAIN):
			return false // not yet: wait for the fd to be readable
		default:
			evErr = &Error{Op: "ibv_get_cq_event", Errno: errnoOf(rc, err)}
		}
		return true
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("completion channel: %w", err)
	}
	return got, evErr
}

func (c *channel) Close() error {
	c.f.Close()
	if rc, err := C.gobps_destroy_channel(c.ch); rc != 0 {
		return &Error{Op: "ibv_destroy_comp_channel", Errno: errnoOf(rc, err)}
	}
	return nil
}

type cq struct {
	q   *C.struct_ibv_cq
	tmp *C.struct_ibv_wc
	out *C.struct_gobps_wc
	n   int
}

func (q *cq) Poll(wc []WC) (int, error) {
	n := min(len(wc), q.n)
	got := int(C.gobps_poll_cq(q.q, C.int(n), q.tmp, q.out))
	if got < 0 {
		return 0, &Error{Op: "ibv_poll_cq", Errno: syscall.EIO}
	}
	out := unsafe.Slice(q.out, q.n)
	for i := 0; i < got; i++ {
		o := &out[i]
		st := WCStatus(o.status)
		wc[i] = WC{
			ID: uint64(o.wr_id), Status: st, Op: WCOpcode(o.opcode), Len: uint32(o.byte_len),
			Imm: uint32(o.imm), HasImm: o.has_imm != 0, QPNum: uint32(o.qp_num), VendorErr: uint32(o.vendor_err),
		}
		if st != StatusSuccess {
			wc[i].StatusText = C.GoString(C.gobps_status_str(C.int(st)))
		}
	}
	return got, nil
}

func (q *cq) Notify() error {
	if rc := C.gobps_notify_cq(q.q); rc != 0 {
		return &Error{Op: "ibv_req_notify_cq", Errno: errnoOf(rc, nil)}
	}
	return nil
}

func (q *cq) Close() error {
	if rc, err := C.gobps_destroy_cq(q.q); rc != 0 {
		return &Error{Op: "ibv_destroy_cq", Errno: errnoOf(rc, err)}
	}
	C.free(unsafe.Pointer(q.tmp))
	C.free(unsafe.Pointer(q.out))
	return nil
}

func (p *pd) NewQP(q CQ, c QPCaps) (QP, error) {
	var inl C.uint32_t
	ccq := q.(*cq).q
	r, err := C.gobps_create_qp(p.p, ccq, C.uint32_t(c.MaxSendWR), C.uint32_t(c.MaxRecvWR), C.uint32_t(c.MaxInline), &inl)
	if r == nil && c.MaxInline > 0 {
		// Some providers refuse inline data: go without.
		r, err = C.gobps_create_qp(p.p, ccq, C.uint32_t(c.MaxSendWR), C.uint32_t(c.MaxRecvWR), 0, &inl)
	}
	if r == nil {
		return nil, ptrErr("ibv_create_qp", err, fmt.Sprintf("RC, %d send and %d receive WRs", c.MaxSendWR, c.MaxRecvWR))
	}
	return &qp{q: r, inline: int(inl)}, nil
}

type qp struct {
	q      *C.struct_ibv_qp
	inline int
}

func (q *qp) Num() uint32    { return uint32(C.gobps_qp_num(q.q)) }
func (q *qp) MaxInline() int { return q.inline }

func (q *qp) modErr(rc C.int, to string) error {
	if rc == 0 {
		return nil
	}
	return &Error{Op: "ibv_modify_qp", Errno: errnoOf(rc, nil), Detail: fmt.Sprintf("QP %d to %s", q.Num(), to)}
}

func (q *qp) Init(port int, access Access) error {
	return q.modErr(C.gobps_qp_init(q.q, C.uint8_t(port), C.int(access)), "INIT")
}

func (q *qp) ReadyToReceive(a RTRAttr) error {
	g := a.DestGID
	global := C.int(0)
	if a.Global {
		global = 1
	}
	rc := C.gobps_qp_rtr(q.q, C.uint8_t(a.Port), C.int(a.MTU), C.uint32_t(a.DestQPN), C.uint32_t(a.RecvPSN),
		C.uint16_t(a.DestLID), global, (*C.uint8_t)(unsafe.Pointer(&g[0])), C.int(a.SGIDIndex), C.uint8_t(a.HopLimit),
		C.uint8_t(a.MinRNRTimer))
	return q.modErr(rc, "RTR")
}

func (q *qp) ReadyToSend(a RTSAttr) error {
	return q.modErr(C.gobps_qp_rts(q.q, C.uint32_t(a.SendPSN), C.uint8_t(a.Timeout), C.uint8_t(a.RetryCnt), C.uint8_t(a.RNRRetry)), "RTS")
}

func (q *qp) Fail() error { return q.modErr(C.gobps_qp_err(q.q), "ERROR") }

func (q *qp) PostSend(wr *SendWR) error {
	flags := 0
	if wr.Signaled {
		flags |= C.IBV_SEND_SIGNALED
	}
	if wr.Inline {
		flags |= C.IBV_SEND_INLINE
	}
	rc := C.gobps_post_send(q.q, C.uint64_t(wr.ID), C.int(wr.Op), C.int(flags), C.uint64_t(wr.Addr), C.uint32_t(wr.Len),
		C.uint32_t(wr.LKey), C.uint64_t(wr.RemoteAddr), C.uint32_t(wr.RKey), C.uint32_t(wr.Imm))
	if rc != 0 {
		return &Error{Op: "ibv_post_send", Errno: errnoOf(rc, nil), Detail: fmt.Sprintf("%s of %d bytes", wr.Op, wr.Len)}
	}
	return nil
}

func (q *qp) PostRecv(wr *RecvWR) error {
	if rc := C.gobps_post_recv(q.q, C.uint64_t(wr.ID), C.uint64_t(wr.Addr), C.uint32_t(wr.Len), C.uint32_t(wr.LKey)); rc != 0 {
		return &Error{Op: "ibv_post_recv", Errno: errnoOf(rc, nil)}
	}
	return nil
}

func (q *qp) Close() error {
	if rc, err := C.gobps_destroy_qp(q.q); rc != 0 {
		return &Error{Op: "ibv_destroy_qp", Errno: errnoOf(rc, err)}
	}
	return nil
}
