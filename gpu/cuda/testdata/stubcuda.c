// A stub CUDA driver for gobps's tests: the 25 entry points gpu/cuda
// resolves, over host memory, so that the dlopen/dlsym loading, the cgo
// shims and the context handling run on a machine without a GPU. It is
// NOT a simulation of a GPU (the fake device in gpu/fake is): copies run
// synchronously at enqueue. It checks what a real driver would reject:
// calls that need a context fail with CUDA_ERROR_INVALID_CONTEXT unless the
// primary context is current on the calling thread, unknown streams,
// events and pointers fail with CUDA_ERROR_INVALID_HANDLE/VALUE, and
// cuEventQuery/cuStreamQuery report CUDA_ERROR_NOT_READY a few times after
// each record so that callers must poll. gobps_stub_stats() reports what
// happened.
//
// Built by gpu/cuda's tests: cc -shared -fPIC -o libcuda.so.1 stubcuda.c

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef unsigned long long CUdeviceptr;

enum {
	OK = 0,
	INVALID_VALUE = 1,
	NOT_INITIALIZED = 3,
	INVALID_CONTEXT = 201,
	INVALID_HANDLE = 400,
	NOT_READY = 600,
	HOST_MEMORY_ALREADY_REGISTERED = 712,
	HOST_MEMORY_NOT_REGISTERED = 713,
};

struct CUctx_st { int magic; };
struct CUstream_st { int magic; int prio; };
struct CUevent_st { int magic; int pending; };

#define MAGIC_STREAM 0x5757
#define MAGIC_EVENT 0xe7e7
#define NOT_READY_POLLS 3

static struct CUctx_st primary = {0xc7c7};
static __thread CUcontext current;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int initialized, retained;
static long ctx_errors, calls, not_ready, ctx_left_current, registered_bytes, live_streams, live_events, live_allocs;

#define MAX_REG 4096
static struct { char *p; size_t n; } regs[MAX_REG];

static CUresult need_ctx(void) {
	__atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
	if (!initialized) return NOT_INITIALIZED;
	if (current != &primary) {
		__atomic_add_fetch(&ctx_errors, 1, __ATOMIC_RELAXED);
		return INVALID_CONTEXT;
	}
	return OK;
}

#define CHECK_CTX() do { CUresult r_ = need_ctx(); if (r_) return r_; } while (0)

// Stream handles 0 (legacy), 1 (CU_STREAM_LEGACY) and 2 (per thread) are
// valid without being created.
static int bad_stream(CUstream s) {
	return (uintptr_t)s > 2 && s->magic != MAGIC_STREAM;
}

CUresult cuInit(unsigned int flags) {
	if (flags != 0) return INVALID_VALUE;
	initialized = 1;
	return OK;
}
CUresult cuDeviceGetCount(int *n) { *n = 1; return initialized ? OK : NOT_INITIALIZED; }
CUresult cuDeviceGet(CUdevice *d, int i) {
	if (i != 0) return 101; // CUDA_ERROR_INVALID_DEVICE
	*d = 0;
	return OK;
}
CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
	strncpy(name, "gobps stub CUDA device", len - 1);
	name[len - 1] = 0;
	return d == 0 ? OK : 101;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d) {
	pthread_mutex_lock(&mu);
	retained++;
	pthread_mutex_unlock(&mu);
	*c = &primary;
	return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
	pthread_mutex_lock(&mu);
	CUresult r = retained > 0 ? (retained--, OK) : INVALID_CONTEXT;
	pthread_mutex_unlock(&mu);
	return r;
}
CUresult cuCtxGetCurrent(CUcontext *c) {
	// gobps's threads never make a context current except for the length
	// of one call: finding it current means a call did not restore it.
	if (current != NULL) __atomic_add_fetch(&ctx_left_current, 1, __ATOMIC_RELAXED);
	*c = current;
	return OK;
}
CUresult cuCtxSetCurrent(CUcontext c) {
	if (c != NULL && c != &primary) return INVALID_CONTEXT;
	current = c;
	return OK;
}
CUresult cuCtxGetStreamPriorityRange(int *least, int *greatest) {
	CHECK_CTX();
	*least = 0;
	*greatest = -5;
	return OK;
}

CUresult cuMemHostRegister_v2(void *p, size_t n, unsigned int flags) {
	CHECK_CTX();
	// Page-aligned ranges, CU_MEMHOSTREGISTER_PORTABLE: what gobps asks for.
	if (p == NULL || n == 0 || ((uintptr_t)p & 4095) || (n & 4095) || flags != 1) return INVALID_VALUE;
	pthread_mutex_lock(&mu);
	int free_slot = -1;
	for (int i = 0; i < MAX_REG; i++) {
		if (regs[i].p == NULL) {
			if (free_slot < 0) free_slot = i;
		} else if ((char *)p < regs[i].p + regs[i].n && regs[i].p < (char *)p + n) {
			pthread_mutex_unlock(&mu);
			return HOST_MEMORY_ALREADY_REGISTERED;
		}
	}
	if (free_slot < 0) {
		pthread_mutex_unlock(&mu);
		return 2; // CUDA_ERROR_OUT_OF_MEMORY
	}
	regs[free_slot].p = p;
	regs[free_slot].n = n;
	registered_bytes += n;
	pthread_mutex_unlock(&mu);
	return OK;
}
CUresult cuMemHostUnregister(void *p) {
	CHECK_CTX();
	pthread_mutex_lock(&mu);
	for (int i = 0; i < MAX_REG; i++) {
		if (regs[i].p == p) {
			registered_bytes -= regs[i].n;
			regs[i].p = NULL;
			pthread_mutex_unlock(&mu);
			return OK;
		}
	}
	pthread_mutex_unlock(&mu);
	return HOST_MEMORY_NOT_REGISTERED;
}

// Device memory is malloc'd host memory; the CUdeviceptr is its address,
// prefixed by a header that marks it as ours.
#define ALLOC_MAGIC 0xa110ca7eULL
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
	CHECK_CTX();
	unsigned long long *h = malloc(n + 16);
	if (!h) return 2;
	h[0] = ALLOC_MAGIC;
	h[1] = n;
	*p = (CUdeviceptr)(uintptr_t)(h + 2);
	__atomic_add_fetch(&live_allocs, 1, __ATOMIC_RELAXED);
	return OK;
}
static unsigned long long *alloc_header(CUdeviceptr p) {
	// Only pointers handed out by cuMemAlloc_v2 (or inside them, for the
	// copies below, which the tests keep at offset 0) are accepted.
	if (p < 4096 || (p & 7)) return NULL;
	unsigned long long *h = (unsigned long long *)(uintptr_t)p - 2;
	return h[0] == ALLOC_MAGIC ? h : NULL;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
	CHECK_CTX();
	if (p < (1 << 20)) return INVALID_VALUE; // never dereference small bogus values
	unsigned long long *h = alloc_header(p);
	if (!h) return INVALID_VALUE;
	h[0] = 0;
	free(h);
	__atomic_sub_fetch(&live_allocs, 1, __ATOMIC_RELAXED);
	return OK;
}
static int bad_range(CUdeviceptr p, size_t n) {
	unsigned long long *h = p < (1 << 20) ? NULL : alloc_header(p);
	return h == NULL || n > h[1];
}
CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s) {
	CHECK_CTX();
	if (bad_stream(s)) return INVALID_HANDLE;
	if (bad_range(src, n) || dst == NULL) return INVALID_VALUE;
	memcpy(dst, (void *)(uintptr_t)src, n);
	return OK;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream s) {
	CHECK_CTX();
	if (bad_stream(s)) return INVALID_HANDLE;
	if (bad_range(dst, n) || src == NULL) return INVALID_VALUE;
	memcpy((void *)(uintptr_t)dst, src, n);
	return OK;
}

CUresult cuStreamCreateWithPriority(CUstream *ps, unsigned int flags, int prio) {
	CHECK_CTX();
	if (flags != 1) return INVALID_VALUE; // gobps always asks for CU_STREAM_NON_BLOCKING
	if (prio < -5 || prio > 0) return INVALID_VALUE;
	CUstream s = calloc(1, sizeof *s);
	s->magic = MAGIC_STREAM;
	s->prio = prio;
	*ps = s;
	__atomic_add_fetch(&live_streams, 1, __ATOMIC_RELAXED);
	return OK;
}
CUresult cuStreamQuery(CUstream s) {
	CHECK_CTX();
	return bad_stream(s) ? INVALID_HANDLE : OK;
}
CUresult cuStreamDestroy_v2(CUstream s) {
	CHECK_CTX();
	if ((uintptr_t)s <= 2 || bad_stream(s)) return INVALID_HANDLE;
	s->magic = 0;
	free(s);
	__atomic_sub_fetch(&live_streams, 1, __ATOMIC_RELAXED);
	return OK;
}
CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int flags) {
	CHECK_CTX();
	if (bad_stream(s) || e == NULL || e->magic != MAGIC_EVENT || flags != 0) return INVALID_HANDLE;
	return OK;
}
CUresult cuEventCreate(CUevent *pe, unsigned int flags) {
	CHECK_CTX();
	CUevent e = calloc(1, sizeof *e);
	e->magic = MAGIC_EVENT;
	*pe = e;
	__atomic_add_fetch(&live_events, 1, __ATOMIC_RELAXED);
	return OK;
}
CUresult cuEventRecord(CUevent e, CUstream s) {
	CHECK_CTX();
	if (bad_stream(s) || e == NULL || e->magic != MAGIC_EVENT) return INVALID_HANDLE;
	__atomic_store_n(&e->pending, NOT_READY_POLLS, __ATOMIC_RELAXED);
	return OK;
}
CUresult cuEventQuery(CUevent e) {
	CHECK_CTX();
	if (e == NULL || e->magic != MAGIC_EVENT) return INVALID_HANDLE;
	int p = __atomic_load_n(&e->pending, __ATOMIC_RELAXED);
	while (p > 0) {
		if (__atomic_compare_exchange_n(&e->pending, &p, p - 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
			__atomic_add_fetch(&not_ready, 1, __ATOMIC_RELAXED);
			return NOT_READY;
		}
	}
	return OK;
}
CUresult cuEventDestroy_v2(CUevent e) {
	CHECK_CTX();
	if (e == NULL || e->magic != MAGIC_EVENT) return INVALID_HANDLE;
	e->magic = 0;
	free(e);
	__atomic_sub_fetch(&live_events, 1, __ATOMIC_RELAXED);
	return OK;
}

static const char *names[][2] = {
	{"CUDA_SUCCESS", "no error"},
	{"CUDA_ERROR_INVALID_VALUE", "invalid argument"},
};
CUresult cuGetErrorName(CUresult r, const char **s) {
	switch (r) {
	case OK: *s = names[0][0]; return OK;
	case INVALID_VALUE: *s = names[1][0]; return OK;
	case INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; return OK;
	case INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; return OK;
	case NOT_READY: *s = "CUDA_ERROR_NOT_READY"; return OK;
	}
	*s = NULL;
	return INVALID_VALUE;
}
CUresult cuGetErrorString(CUresult r, const char **s) {
	switch (r) {
	case OK: *s = names[0][1]; return OK;
	case INVALID_VALUE: *s = names[1][1]; return OK;
	case INVALID_CONTEXT: *s = "invalid device context"; return OK;
	case INVALID_HANDLE: *s = "invalid resource handle"; return OK;
	case NOT_READY: *s = "device not ready"; return OK;
	}
	*s = NULL;
	return INVALID_VALUE;
}

// gobps_stub_stats is for the tests (looked up with dlsym): context
// errors, driver calls, NOT_READY answers, registered bytes, live streams,
// events and allocations, primary context references, and calls that
// found a context left current.
void gobps_stub_stats(long out[9]) {
	out[0] = __atomic_load_n(&ctx_errors, __ATOMIC_RELAXED);
	out[1] = __atomic_load_n(&calls, __ATOMIC_RELAXED);
	out[2] = __atomic_load_n(&not_ready, __ATOMIC_RELAXED);
	pthread_mutex_lock(&mu);
	out[3] = registered_bytes;
	out[7] = retained;
	pthread_mutex_unlock(&mu);
	out[4] = __atomic_load_n(&live_streams, __ATOMIC_RELAXED);
	out[5] = __atomic_load_n(&live_events, __ATOMIC_RELAXED);
	out[6] = __atomic_load_n(&live_allocs, __ATOMIC_RELAXED);
	out[8] = __atomic_load_n(&ctx_left_current, __ATOMIC_RELAXED);
}
