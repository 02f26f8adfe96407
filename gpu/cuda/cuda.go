//go:build cgo && linux

package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// The CUDA driver ABI on 64-bit Linux, declared here instead of including
// cuda.h (which this project's build machines do not have). Handles are
// opaque pointers; CUdeviceptr is 64 bits (CUdeviceptr_v2 since CUDA 11).
typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef unsigned long long CUdeviceptr;

#define GOBPS_CUDA_ERROR_NOT_READY 600
#define GOBPS_CU_STREAM_NON_BLOCKING 0x1
#define GOBPS_CU_EVENT_DISABLE_TIMING 0x2
#define GOBPS_CU_MEMHOSTREGISTER_PORTABLE 0x1

// The entry points gobps calls, by the symbol names the driver exports.
// cuda.h maps the unversioned API names onto these with #defines (for
// example "#define cuMemcpyDtoHAsync __CUDA_API_PTSZ(cuMemcpyDtoHAsync_v2)",
// "#define cuMemHostRegister cuMemHostRegister_v2", "#define
// cuDevicePrimaryCtxRelease cuDevicePrimaryCtxRelease_v2" since CUDA 11,
// "#define cuStreamDestroy cuStreamDestroy_v2", "#define cuEventDestroy
// cuEventDestroy_v2", "#define cuMemAlloc cuMemAlloc_v2", "#define cuMemFree
// cuMemFree_v2"); dlsym sees only the exported names. The _ptsz
// (per-thread default stream) variants are not used: stream handle 0 means
// the legacy default stream, as in PyTorch's default build. Prototypes as
// in the CUDA Driver API reference (CUDA 12).
typedef struct {
	CUresult (*cuInit)(unsigned int flags);
	CUresult (*cuDeviceGetCount)(int *count);
	CUresult (*cuDeviceGet)(CUdevice *device, int ordinal);
	CUresult (*cuDeviceGetName)(char *name, int len, CUdevice dev);
	CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *pctx, CUdevice dev);
	CUresult (*cuDevicePrimaryCtxRelease)(CUdevice dev);             // _v2
	CUresult (*cuCtxGetCurrent)(CUcontext *pctx);
	CUresult (*cuCtxSetCurrent)(CUcontext ctx);
	CUresult (*cuCtxGetStreamPriorityRange)(int *least, int *greatest);
	CUresult (*cuMemHostRegister)(void *p, size_t bytesize, unsigned int flags); // _v2
	CUresult (*cuMemHostUnregister)(void *p);
	CUresult (*cuMemAlloc)(CUdeviceptr *dptr, size_t bytesize);      // _v2
	CUresult (*cuMemFree)(CUdeviceptr dptr);                         // _v2
	CUresult (*cuMemcpyDtoHAsync)(void *dst, CUdeviceptr src, size_t n, CUstream s);       // _v2
	CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr dst, const void *src, size_t n, CUstream s); // _v2
	CUresult (*cuStreamCreateWithPriority)(CUstream *ps, unsigned int flags, int priority);
	CUresult (*cuStreamQuery)(CUstream s);
	CUresult (*cuStreamDestroy)(CUstream s);                         // _v2
	CUresult (*cuStreamWaitEvent)(CUstream s, CUevent e, unsigned int flags);
	CUresult (*cuEventCreate)(CUevent *pe, unsigned int flags);
	CUresult (*cuEventRecord)(CUevent e, CUstream s);
	CUresult (*cuEventQuery)(CUevent e);
	CUresult (*cuEventDestroy)(CUevent e);                           // _v2
	CUresult (*cuGetErrorName)(CUresult error, const char **pstr);
	CUresult (*cuGetErrorString)(CUresult error, const char **pstr);
} gobps_cuda_api;

static gobps_cuda_api gobps_cu;
static void *gobps_cu_handle;

// gobps_cuda_load dlopens name and resolves every entry point into
// gobps_cu, all or nothing. It returns 0, or -1 with the dlerror message
// copied into err (dlerror's buffer is per thread, so it is copied before
// this cgo call returns).
static int gobps_cuda_load(const char *name, char *err, size_t errlen) {
	gobps_cuda_api api;
	void *h;
	const char *e;

	dlerror();
	h = dlopen(name, RTLD_LAZY | RTLD_GLOBAL);
	if (h == NULL) {
		e = dlerror();
		strncpy(err, e ? e : "dlopen failed", errlen - 1);
		err[errlen - 1] = 0;
		return -1;
	}
#define GOBPS_SYM(field, sym) do { \
		*(void **)(&api.field) = dlsym(h, sym); \
		if (api.field == NULL) { \
			e = dlerror(); \
			strncpy(err, e ? e : "dlsym " sym " failed", errlen - 1); \
			err[errlen - 1] = 0; \
			dlclose(h); \
			return -1; \
		} \
	} while (0)
	GOBPS_SYM(cuInit, "cuInit");
	GOBPS_SYM(cuDeviceGetCount, "cuDeviceGetCount");
	GOBPS_SYM(cuDeviceGet, "cuDeviceGet");
	GOBPS_SYM(cuDeviceGetName, "cuDeviceGetName");
	GOBPS_SYM(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
	GOBPS_SYM(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
	GOBPS_SYM(cuCtxGetCurrent, "cuCtxGetCurrent");
	GOBPS_SYM(cuCtxSetCurrent, "cuCtxSetCurrent");
	GOBPS_SYM(cuCtxGetStreamPriorityRange, "cuCtxGetStreamPriorityRange");
	GOBPS_SYM(cuMemHostRegister, "cuMemHostRegister_v2");
	GOBPS_SYM(cuMemHostUnregister, "cuMemHostUnregister");
	GOBPS_SYM(cuMemAlloc, "cuMemAlloc_v2");
	GOBPS_SYM(cuMemFree, "cuMemFree_v2");
	GOBPS_SYM(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2");
	GOBPS_SYM(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2");
	GOBPS_SYM(cuStreamCreateWithPriority, "cuStreamCreateWithPriority");
	GOBPS_SYM(cuStreamQuery, "cuStreamQuery");
	GOBPS_SYM(cuStreamDestroy, "cuStreamDestroy_v2");
	GOBPS_SYM(cuStreamWaitEvent, "cuStreamWaitEvent");
	GOBPS_SYM(cuEventCreate, "cuEventCreate");
	GOBPS_SYM(cuEventRecord, "cuEventRecord");
	GOBPS_SYM(cuEventQuery, "cuEventQuery");
	GOBPS_SYM(cuEventDestroy, "cuEventDestroy_v2");
	GOBPS_SYM(cuGetErrorName, "cuGetErrorName");
	GOBPS_SYM(cuGetErrorString, "cuGetErrorString");
#undef GOBPS_SYM
	gobps_cu = api;
	gobps_cu_handle = h;
	return 0;
}

// gobps_cuda_stub_stats calls the test driver's gobps_stub_stats (see
// testdata/stubcuda.c) if the loaded library has it. Test support only.
static int gobps_cuda_stub_stats(long *out) {
	void (*f)(long *);
	if (gobps_cu_handle == NULL) return -1;
	*(void **)(&f) = dlsym(gobps_cu_handle, "gobps_stub_stats");
	if (f == NULL) return -1;
	f(out);
	return 0;
}

// Every call below runs with ctx current on the calling thread and restores
// the thread's previous context afterwards. Goroutines move between OS
// threads, and a thread may be the framework's own (a cgo call from Python
// runs Go on the caller's thread), so no thread is assumed to keep a
// context. Handles cross the cgo boundary as uintptr_t.
#define GOBPS_WITH_CTX(ctx, call) do { \
		CUcontext want_ = (CUcontext)(ctx), old_ = NULL; \
		CUresult r_ = gobps_cu.cuCtxGetCurrent(&old_); \
		if (r_ != 0) return r_; \
		if (old_ != want_ && (r_ = gobps_cu.cuCtxSetCurrent(want_)) != 0) return r_; \
		r_ = (call); \
		if (old_ != want_) gobps_cu.cuCtxSetCurrent(old_); \
		return r_; \
	} while (0)

static CUresult gobps_cu_init(void) { return gobps_cu.cuInit(0); }
static CUresult gobps_cu_device_count(int *n) { return gobps_cu.cuDeviceGetCount(n); }
static CUresult gobps_cu_device_get(CUdevice *d, int i) { return gobps_cu.cuDeviceGet(d, i); }
static CUresult gobps_cu_device_name(char *name, int len, CUdevice d) { return gobps_cu.cuDeviceGetName(name, len, d); }

static CUresult gobps_cu_primary_retain(uintptr_t *ctx, CUdevice d) {
	CUcontext c = NULL;
	CUresult r = gobps_cu.cuDevicePrimaryCtxRetain(&c, d);
	*ctx = (uintptr_t)c;
	return r;
}
static CUresult gobps_cu_primary_release(CUdevice d) { return gobps_cu.cuDevicePrimaryCtxRelease(d); }

static CUresult gobps_cu_priority_range(uintptr_t ctx, int *least, int *greatest) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuCtxGetStreamPriorityRange(least, greatest));
}
static CUresult gobps_cu_host_register(uintptr_t ctx, void *p, size_t n) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuMemHostRegister(p, n, GOBPS_CU_MEMHOSTREGISTER_PORTABLE));
}
static CUresult gobps_cu_host_unregister(uintptr_t ctx, void *p) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuMemHostUnregister(p));
}
static CUresult gobps_cu_malloc(uintptr_t ctx, CUdeviceptr *p, size_t n) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuMemAlloc(p, n));
}
static CUresult gobps_cu_free(uintptr_t ctx, CUdeviceptr p) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuMemFree(p));
}
static CUresult gobps_cu_dtoh(uintptr_t ctx, void *dst, CUdeviceptr src, size_t n, uintptr_t s) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuMemcpyDtoHAsync(dst, src, n, (CUstream)s));
}
static CUresult gobps_cu_htod(uintptr_t ctx, CUdeviceptr dst, const void *src, size_t n, uintptr_t s) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuMemcpyHtoDAsync(dst, src, n, (CUstream)s));
}
static CUresult gobps_cu_stream_create(uintptr_t ctx, uintptr_t *s, int priority) {
	CUstream st = NULL;
	CUresult r;
	// Non-blocking: the stream never synchronizes implicitly with the
	// legacy default stream; ordering with the framework is by events only.
	GOBPS_WITH_CTX(ctx, (r = gobps_cu.cuStreamCreateWithPriority(&st, GOBPS_CU_STREAM_NON_BLOCKING, priority), *s = (uintptr_t)st, r));
}
static CUresult gobps_cu_stream_query(uintptr_t ctx, uintptr_t s) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuStreamQuery((CUstream)s));
}
static CUresult gobps_cu_stream_destroy(uintptr_t ctx, uintptr_t s) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuStreamDestroy((CUstream)s));
}
static CUresult gobps_cu_stream_wait(uintptr_t ctx, uintptr_t s, uintptr_t e) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuStreamWaitEvent((CUstream)s, (CUevent)e, 0));
}
static CUresult gobps_cu_event_create(uintptr_t ctx, uintptr_t *e) {
	CUevent ev = NULL;
	CUresult r;
	GOBPS_WITH_CTX(ctx, (r = gobps_cu.cuEventCreate(&ev, GOBPS_CU_EVENT_DISABLE_TIMING), *e = (uintptr_t)ev, r));
}
static CUresult gobps_cu_event_record(uintptr_t ctx, uintptr_t e, uintptr_t s) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuEventRecord((CUevent)e, (CUstream)s));
}
static CUresult gobps_cu_event_query(uintptr_t ctx, uintptr_t e) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuEventQuery((CUevent)e));
}
static CUresult gobps_cu_event_destroy(uintptr_t ctx, uintptr_t e) {
	GOBPS_WITH_CTX(ctx, gobps_cu.cuEventDestroy((CUevent)e));
}

// gobps_cu_error_text fills name and desc for r (never NULL).
static void gobps_cu_error_text(CUresult r, const char **name, const char **desc) {
	*name = NULL;
	*desc = NULL;
	if (gobps_cu.cuGetErrorName == NULL || gobps_cu.cuGetErrorName(r, name) != 0 || *name == NULL) *name = "CUDA_ERROR_UNKNOWN_CODE";
	if (gobps_cu.cuGetErrorString == NULL || gobps_cu.cuGetErrorString(r, desc) != 0 || *desc == NULL) *desc = "unrecognized error code";
}
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/gobps/gobps/gpu"
)

// cgoBuild says this is the real binding (for tests shared with the stub).
const cgoBuild = true

// libName is the CUDA driver library, loaded by soname as the NVIDIA
// driver installs it.
const libName = "libcuda.so.1"

// drivers records the loading of driver libraries, by name: the result,
// success or failure, is kept (a library that is missing now will not
// appear later). One library at most is loaded: its entry points fill the
// one C table.
var drivers struct {
	sync.Mutex
	loaded string           // the library in the table, cuInit done
	failed map[string]error // libraries that could not be used
}

// load makes name the driver: dlopen, resolve the entry points, cuInit.
func load(name string) error {
	drivers.Lock()
	defer drivers.Unlock()
	if name == drivers.loaded {
		return nil
	}
	if err, ok := drivers.failed[name]; ok {
		return err
	}
	if drivers.loaded != "" {
		return fmt.Errorf("cuda: cannot load %s: %s is loaded", name, drivers.loaded)
	}
	err := loadLib(name)
	if err == nil {
		if r := C.gobps_cu_init(); r != codeSuccess {
			err = fmt.Errorf("cuda: no usable driver: %w", newError("cuInit", r))
		}
	}
	if err != nil {
		if drivers.failed == nil {
			drivers.failed = map[string]error{}
		}
		drivers.failed[name] = err
		return err
	}
	drivers.loaded = name
	return nil
}

// loadLib loads name into the entry point table. The error wraps
// gpu.ErrNotSupported and carries dlerror's message.
func loadLib(name string) error {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var msg [512]C.char
	if C.gobps_cuda_load(cname, &msg[0], C.size_t(len(msg))) != 0 {
		return fmt.Errorf("%w: cuda: dlopen %s: %s", gpu.ErrNotSupported, name, C.GoString(&msg[0]))
	}
	return nil
}

// newError describes a failed driver call.
func newError(op string, r C.CUresult) error {
	var name, desc *C.char
	C.gobps_cu_error_text(r, &name, &desc)
	return &Error{Op: op, Code: int(r), Name: C.GoString(name), Desc: C.GoString(desc)}
}

func check(op string, r C.CUresult) error {
	if r == codeSuccess {
		return nil
	}
	return newError(op, r)
}

// Device is a CUDA device through the driver API, holding a reference to
// the device's primary context (the one PyTorch and the CUDA runtime use),
// so memory, streams and events are shared with the framework. It
// implements gpu.Device; Malloc and Free are extras for tests.
//
// Locking: all methods are safe for concurrent use.
type Device struct {
	index    int
	dev      C.CUdevice
	ctx      C.uintptr_t
	name     string
	least    C.int // lowest stream priority (numerically greatest)
	greatest C.int // highest stream priority (numerically least)
	closed   atomic.Bool
}

var _ gpu.Device = (*Device)(nil)

// Open loads the CUDA driver (libcuda.so.1, with dlopen) and opens device
// index (a CUDA ordinal, after CUDA_VISIBLE_DEVICES). Where the library is
// missing the error wraps gpu.ErrNotSupported and carries the dlopen
// message; where the driver finds no device, errors.Is(err,
// gpu.ErrNotSupported) holds as well. Never run on a GPU in this project's
// CI.
func Open(index int) (gpu.Device, error) {
	return open(libName, index)
}

// open is Open with another driver library (tests load a stub driver).
func open(lib string, index int) (gpu.Device, error) {
	if err := load(lib); err != nil {
		return nil, err
	}
	var count C.int
	if err := check("cuDeviceGetCount", C.gobps_cu_device_count(&count)); err != nil {
		return nil, err
	}
	if count == 0 {
		return nil, fmt.Errorf("%w: cuda: the driver reports no device", gpu.ErrNotSupported)
	}
	if index < 0 || index >= int(count) {
		return nil, fmt.Errorf("cuda: device %d requested, the driver reports %d", index, count)
	}
	d := &Device{index: index}
	if err := check("cuDeviceGet", C.gobps_cu_device_get(&d.dev, C.int(index))); err != nil {
		return nil, err
	}
	var name [256]C.char
	if err := check("cuDeviceGetName", C.gobps_cu_device_name(&name[0], C.int(len(name)), d.dev)); err != nil {
		return nil, err
	}
	d.name = C.GoString(&name[0])
	if err := check("cuDevicePrimaryCtxRetain", C.gobps_cu_primary_retain(&d.ctx, d.dev)); err != nil {
		return nil, err
	}
	if err := check("cuCtxGetStreamPriorityRange", C.gobps_cu_priority_range(d.ctx, &d.least, &d.greatest)); err != nil {
		_ = C.gobps_cu_primary_release(d.dev)
		return nil, err
	}
	return d, nil
}

// Index implements gpu.Device.
func (d *Device) Index() int { return d.index }

// Name implements gpu.Device (cuDeviceGetName).
func (d *Device) Name() string { return d.name }

func (d *Device) usable() error {
	if d.closed.Load() {
		return fmt.Errorf("cuda: device %d: %w", d.index, gpu.ErrClosed)
	}
	return nil
}

// AllocHost implements gpu.Device: anonymous mapped memory, page-locked and
// registered with cuMemHostRegister (portable to every context). When the
// driver refuses (the memlock limit, or no memory), the error is returned
// and nothing is kept.
func (d *Device) AllocHost(n int) (gpu.HostBuffer, error) {
	if err := d.usable(); err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, fmt.Errorf("cuda: pin %d bytes: size must be positive", n)
	}
	// Register whole pages: older drivers require page-aligned ranges.
	whole := (n + gpu.PageSize - 1) / gpu.PageSize * gpu.PageSize
	hb, err := gpu.AllocPageable(whole)
	if err != nil {
		return nil, err
	}
	b := hb.Bytes()
	if err := check("cuMemHostRegister_v2", C.gobps_cu_host_register(d.ctx, unsafe.Pointer(&b[0]), C.size_t(len(b)))); err != nil {
		_ = hb.Free()
		return nil, fmt.Errorf("cuda: pin %d bytes: %w", n, err)
	}
	return &pinned{HostBuffer: hb, d: d, n: n}, nil
}

// pinned is registered host memory.
type pinned struct {
	gpu.HostBuffer // whole pages
	d              *Device
	n              int
	mu             sync.Mutex
	freed          bool
}

// Bytes implements gpu.HostBuffer: the n bytes asked for.
func (p *pinned) Bytes() []byte { return p.HostBuffer.Bytes()[:p.n] }

// Pinned implements gpu.HostBuffer.
func (p *pinned) Pinned() bool { return true }

// Free implements gpu.HostBuffer: unregister, then unmap.
func (p *pinned) Free() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.freed {
		return errors.New("cuda: pinned buffer freed twice")
	}
	p.freed = true
	b := p.HostBuffer.Bytes()
	err := check("cuMemHostUnregister", C.gobps_cu_host_unregister(p.d.ctx, unsafe.Pointer(&b[0])))
	return errors.Join(err, p.HostBuffer.Free())
}

// NewStream implements gpu.Device: a non-blocking stream
// (CU_STREAM_NON_BLOCKING) at the device's greatest priority for
// PriorityHigh, its least for PriorityDefault.
func (d *Device) NewStream(p gpu.Priority) (gpu.Stream, error) {
	if err := d.usable(); err != nil {
		return nil, err
	}
	prio := d.least
	if p == gpu.PriorityHigh {
		prio = d.greatest
	}
	s := &stream{d: d, owned: true}
	if err := check("cuStreamCreateWithPriority", C.gobps_cu_stream_create(d.ctx, &s.h, prio)); err != nil {
		return nil, err
	}
	return s, nil
}

// ForeignStream implements gpu.Device: handle is a CUstream of this
// device's primary context (torch.cuda.current_stream().cuda_stream); 0 is
// the legacy default stream.
func (d *Device) ForeignStream(handle uintptr) (gpu.Stream, error) {
	if err := d.usable(); err != nil {
		return nil, err
	}
	return &stream{d: d, h: C.uintptr_t(handle)}, nil
}

// NewEvent implements gpu.Device (CU_EVENT_DISABLE_TIMING: cheaper to
// record and query).
func (d *Device) NewEvent() (gpu.Event, error) {
	if err := d.usable(); err != nil {
		return nil, err
	}
	e := &event{d: d}
	if err := check("cuEventCreate", C.gobps_cu_event_create(d.ctx, &e.h)); err != nil {
		return nil, err
	}
	return e, nil
}

// Malloc allocates n bytes of device memory (cuMemAlloc_v2). gobps itself
// never allocates device memory (the framework does); tests do.
func (d *Device) Malloc(n int) (gpu.DevPtr, error) {
	if err := d.usable(); err != nil {
		return 0, err
	}
	var p C.CUdeviceptr
	if err := check("cuMemAlloc_v2", C.gobps_cu_malloc(d.ctx, &p, C.size_t(n))); err != nil {
		return 0, err
	}
	return gpu.DevPtr(p), nil
}

// Free releases memory from Malloc (cuMemFree_v2).
func (d *Device) Free(p gpu.DevPtr) error {
	if err := d.usable(); err != nil {
		return err
	}
	return check("cuMemFree_v2", C.gobps_cu_free(d.ctx, C.CUdeviceptr(p)))
}

// Close implements gpu.Device: it releases the primary context reference
// (cuDevicePrimaryCtxRelease_v2). The context itself lives on while the
// framework holds it.
func (d *Device) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	return check("cuDevicePrimaryCtxRelease_v2", C.gobps_cu_primary_release(d.dev))
}

// stream is a CUstream, created by NewStream (owned) or wrapped by
// ForeignStream (borrowed: Close does not destroy it).
type stream struct {
	d      *Device
	h      C.uintptr_t
	owned  bool
	closed atomic.Bool
}

func (s *stream) usable() error {
	if s.closed.Load() {
		return fmt.Errorf("cuda: stream: %w", gpu.ErrClosed)
	}
	return s.d.usable()
}

// CopyDtoH implements gpu.Stream (cuMemcpyDtoHAsync_v2).
func (s *stream) CopyDtoH(dst []byte, src gpu.DevPtr) error {
	if err := s.usable(); err != nil || len(dst) == 0 {
		return err
	}
	return check("cuMemcpyDtoHAsync_v2", C.gobps_cu_dtoh(s.d.ctx, unsafe.Pointer(&dst[0]), C.CUdeviceptr(src), C.size_t(len(dst)), s.h))
}

// CopyHtoD implements gpu.Stream (cuMemcpyHtoDAsync_v2).
func (s *stream) CopyHtoD(dst gpu.DevPtr, src []byte) error {
	if err := s.usable(); err != nil || len(src) == 0 {
		return err
	}
	return check("cuMemcpyHtoDAsync_v2", C.gobps_cu_htod(s.d.ctx, C.CUdeviceptr(dst), unsafe.Pointer(&src[0]), C.size_t(len(src)), s.h))
}

func (s *stream) event(e gpu.Event) (*event, error) {
	ce, ok := e.(*event)
	if !ok || ce.d != s.d {
		return nil, fmt.Errorf("cuda: event %T does not belong to device %d", e, s.d.index)
	}
	if ce.closed.Load() {
		return nil, fmt.Errorf("cuda: event: %w", gpu.ErrClosed)
	}
	return ce, nil
}

// Record implements gpu.Stream (cuEventRecord).
func (s *stream) Record(e gpu.Event) error {
	if err := s.usable(); err != nil {
		return err
	}
	ce, err := s.event(e)
	if err != nil {
		return err
	}
	return check("cuEventRecord", C.gobps_cu_event_record(s.d.ctx, ce.h, s.h))
}

// WaitEvent implements gpu.Stream (cuStreamWaitEvent).
func (s *stream) WaitEvent(e gpu.Event) error {
	if err := s.usable(); err != nil {
		return err
	}
	ce, err := s.event(e)
	if err != nil {
		return err
	}
	return check("cuStreamWaitEvent", C.gobps_cu_stream_wait(s.d.ctx, s.h, ce.h))
}

// Synchronize implements gpu.Stream by polling cuStreamQuery.
func (s *stream) Synchronize(ctx context.Context) error {
	if err := s.usable(); err != nil {
		return err
	}
	return poll(ctx, func() (bool, error) {
		switch r := C.gobps_cu_stream_query(s.d.ctx, s.h); r {
		case codeSuccess:
			return true, nil
		case codeNotReady:
			return false, nil
		default:
			return false, newError("cuStreamQuery", r)
		}
	})
}

// Close implements gpu.Stream: cuStreamDestroy_v2 for an owned stream
// (work already enqueued still completes), nothing for a borrowed one.
func (s *stream) Close() error {
	if s.closed.Swap(true) || !s.owned {
		return nil
	}
	return check("cuStreamDestroy_v2", C.gobps_cu_stream_destroy(s.d.ctx, s.h))
}

// event is a CUevent.
type event struct {
	d      *Device
	h      C.uintptr_t
	closed atomic.Bool
}

// Query implements gpu.Event (cuEventQuery).
func (e *event) Query() (bool, error) {
	if e.closed.Load() {
		return false, fmt.Errorf("cuda: event: %w", gpu.ErrClosed)
	}
	switch r := C.gobps_cu_event_query(e.d.ctx, e.h); r {
	case codeSuccess:
		return true, nil
	case codeNotReady:
		return false, nil
	default:
		return false, newError("cuEventQuery", r)
	}
}

// Synchronize implements gpu.Event by polling cuEventQuery.
func (e *event) Synchronize(ctx context.Context) error {
	return poll(ctx, e.Query)
}

// Close implements gpu.Event (cuEventDestroy_v2).
func (e *event) Close() error {
	if e.closed.Swap(true) {
		return nil
	}
	return check("cuEventDestroy_v2", C.gobps_cu_event_destroy(e.d.ctx, e.h))
}

// stubStats returns the counters of the stub driver the tests load
// (testdata/stubcuda.c), or false with the real driver.
func stubStats() ([9]int64, bool) {
	var out [9]C.long
	if C.gobps_cuda_stub_stats(&out[0]) != 0 {
		return [9]int64{}, false
	}
	var r [9]int64
	for i, v := range out {
		r[i] = int64(v)
	}
	return r, true
}
