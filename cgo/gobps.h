/*
 * gobps.h: the C API of gobps, a parameter server for data-parallel
 * training. The library is libgobps.so, built from this directory with
 *
 *     go build -buildmode=c-shared -o build/libgobps.so ./cgo
 *
 * This header is written by hand and is the API; the header that go build
 * writes next to the library (libgobps.h) is an artefact of the build and is
 * not meant to be included.
 *
 * A training process (a "worker") calls gobps_init once, declares the
 * tensors it will reduce, then for every step starts one asynchronous
 * gobps_push_pull per gradient and waits for each handle before using the
 * result:
 *
 *     if (gobps_init(0) != GOBPS_OK) { fputs(gobps_last_error(), stderr); ... }
 *     gobps_declare("fc1.weight", GOBPS_FLOAT32, n);        // in model order
 *     gobps_handle_t h;
 *     gobps_push_pull("fc1.weight", grad, GOBPS_FLOAT32, n, GOBPS_AVERAGE, &h);
 *     ...                                                   // more work
 *     gobps_wait(h, -1);                                    // grad holds the mean
 *     gobps_shutdown();
 *
 * The job is described by the environment (DMLC_ROLE=worker, DMLC_NUM_WORKER,
 * DMLC_PS_ROOT_URI, ...; see docs/env.md), which `bpsrun` sets for every
 * process it starts. gobps_init reads it when it is called, not when the
 * library is loaded.
 *
 * Conventions
 *
 *   - Every function returns an int status: GOBPS_OK (0) or one of the
 *     GOBPS_ERR_* codes below. Results come back through pointer arguments,
 *     which are written only on success. No function aborts the process on
 *     bad input or bad state, including calls made before gobps_init or after
 *     gobps_shutdown.
 *   - After a call fails, gobps_last_error() describes why. The message is
 *     kept per calling thread, so threads do not overwrite each other's
 *     errors; a successful call does not clear it.
 *   - Every function may be called from any thread, concurrently.
 *   - Handles are plain integers (never pointers); 0 is never a valid handle.
 *
 * Memory: push_pull and broadcast are asynchronous. They read and write the
 * caller's buffer from the library's own threads after the call has
 * returned, until the handle completes (gobps_poll reports done, or
 * gobps_wait returns anything but GOBPS_ERR_TIMEOUT). Until then the caller
 * must keep the buffer allocated and must neither read nor write it. The
 * buffer must be ordinary host memory that the caller owns (not memory
 * managed by a garbage collector that may move it).
 */
#ifndef GOBPS_H
#define GOBPS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* GOBPS_API_VERSION changes whenever a signature or a meaning in this file
 * changes; gobps_api_version() returns the version the library was built
 * with, so a binding can check that it matches. */
#define GOBPS_API_VERSION 3

/* Status codes. */
enum {
	GOBPS_OK = 0,
	/* gobps_init has not been called, or failed, or gobps_shutdown was
	 * called. */
	GOBPS_ERR_NOT_INITIALIZED = 1,
	/* A bad argument: a NULL pointer, an unknown dtype or reduce op, a
	 * negative count, a name redeclared with another dtype, size or root,
	 * averaging an integer tensor, and so on. Nothing was started. */
	GOBPS_ERR_INVALID_ARGUMENT = 2,
	/* The handle is unknown, or was already consumed by gobps_wait. */
	GOBPS_ERR_BAD_HANDLE = 3,
	/* gobps_wait's timeout passed before the handle completed; the handle
	 * is still valid and the operation still running. */
	GOBPS_ERR_TIMEOUT = 4,
	/* gobps_init: the environment does not describe a worker of a job
	 * (a missing or malformed variable; the message names it). */
	GOBPS_ERR_CONFIG = 5,
	/* The job failed: a server or another worker died, a connection broke,
	 * a server refused a declaration, or gobps_init could not join the job
	 * in time. The message names the node and the cause. */
	GOBPS_ERR_FAILED = 6,
	/* A bug in gobps (a recovered Go panic). Please report the message. */
	GOBPS_ERR_INTERNAL = 7,
	/* The call needs something this process lacks, such as a CUDA driver
	 * for a tensor in GPU memory; the message says what. Nothing was
	 * started. */
	GOBPS_ERR_NOT_SUPPORTED = 8
};

/* Element types. The values are those of the wire protocol (proto). */
enum {
	GOBPS_FLOAT32 = 1,
	GOBPS_FLOAT64 = 2,
	GOBPS_FLOAT16 = 3, /* IEEE 754 half */
	GOBPS_BFLOAT16 = 4,
	GOBPS_INT32 = 5,
	GOBPS_INT64 = 6,
	GOBPS_UINT8 = 7
};

/* Reduce operations of gobps_push_pull. */
enum {
	GOBPS_SUM = 0,    /* the sum over all workers */
	GOBPS_AVERAGE = 1 /* the sum divided by the number of workers;
	                     floating-point dtypes only */
};

/* A pending push_pull or broadcast. */
typedef int64_t gobps_handle_t;

/* The API version the library implements (GOBPS_API_VERSION when it was
 * built). Never fails. */
int gobps_api_version(void);

/* gobps_last_error describes the last failure of a gobps call on the
 * calling thread, or returns "" if none failed yet. The string belongs to
 * the library and stays valid until the next failing gobps call on the same
 * thread. Never fails and never returns NULL. */
const char *gobps_last_error(void);

/* gobps_init joins the job that the environment describes: it registers
 * with the coordinator, waits until every worker and server has joined and
 * connects to every server. timeout_ms bounds that wait; 0 or a negative
 * value waits as long as it takes. Calling it again after it succeeded does
 * nothing and returns GOBPS_OK; calling it after gobps_shutdown fails with
 * GOBPS_ERR_FAILED (a process joins a job once). */
int gobps_init(int64_t timeout_ms);

/* gobps_shutdown leaves the job. Operations still pending fail with
 * GOBPS_ERR_NOT_INITIALIZED; their handles can still be waited for. Calling
 * it before gobps_init, or twice, returns GOBPS_ERR_NOT_INITIALIZED. */
int gobps_shutdown(void);

/* gobps_join says that this worker has run out of data (uneven inputs, as
 * PyTorch DDP's Join): until every worker has called gobps_join, it
 * answers the other workers' push_pull and broadcast rounds with zeros, so
 * they get the sums of the workers that still have data (GOBPS_AVERAGE
 * still divides by every worker). It returns GOBPS_OK once every worker
 * has joined; the job can then go on, with every worker. Call it after
 * the worker's last operation has completed. timeout_ms bounds the wait
 * (GOBPS_ERR_TIMEOUT, the join then failed); a negative value waits as
 * long as it takes. A worker that exits instead, without joining, makes
 * the others' rounds that need it fail with an error naming it. */
int gobps_join(int64_t timeout_ms);

/* gobps_suspend pauses the job (BytePS's suspend): every worker calls it.
 * Operations in flight complete first; later ones fail with
 * GOBPS_ERR_FAILED ("suspended") until gobps_resume. It returns once every
 * worker has suspended. timeout_ms as for gobps_join. */
int gobps_suspend(int64_t timeout_ms);

/* gobps_resume ends a suspension once every worker resumes. num_workers
 * and num_servers must be the job's size: changing it (elastic training)
 * is not implemented yet, and fails with GOBPS_ERR_INVALID_ARGUMENT. The
 * tensors and their order stay declared. */
int gobps_resume(int num_workers, int num_servers, int64_t timeout_ms);

/* The calling worker's rank (0 .. size-1), the number of workers, and the
 * rank and number of workers on this machine. */
int gobps_rank(int *rank);
int gobps_size(int *size);
int gobps_local_rank(int *local_rank);
int gobps_local_size(int *local_size);

/* gobps_declare declares a tensor of count elements of dtype for
 * gobps_push_pull. Every worker must declare the same tensors (names,
 * dtypes, shapes) in the same order; the servers compare every worker's
 * declarations and fail the ones that disagree, naming both versions, so
 * that tensors matched up wrongly are never summed. The order fixes which
 * server owns each part, and the earlier a
 * tensor is declared the higher its priority (declare in model order, input
 * side first, so that the next forward pass gets its first layers' results
 * first). Declaring a name again with the same dtype and count does
 * nothing; with another, it fails with GOBPS_ERR_INVALID_ARGUMENT.
 * gobps_push_pull declares a name on first use, so calling gobps_declare
 * is needed only to fix the order. */
int gobps_declare(const char *name, int dtype, int64_t count);

/* gobps_declare_broadcast declares a tensor for gobps_broadcast from
 * root (a rank). A name is either for push_pull or for broadcast. */
int gobps_declare_broadcast(const char *name, int dtype, int64_t count, int root);

/* gobps_reserve fixes name's place in the declaration order before its
 * dtype and shape are known, as BytePS's declare(name) does: its priority
 * and keys are those of that place whatever is declared in between, and
 * the workers may first use it (declare or push_pull) in any order. Every
 * worker must reserve the same names in the same order. Reserving a
 * declared or reserved name does nothing. */
int gobps_reserve(const char *name);

/* gobps_declare_shape declares a tensor of the given shape (ndim
 * dimensions at dims, 0 to 32 of them; ndim 0 is a scalar) for
 * gobps_push_pull (root -1) or gobps_broadcast from root. The shape is
 * part of what the servers compare across workers: a tensor of the same
 * size but another shape on another rank is refused. Later calls with the
 * name must agree with it: another shape fails, and a push_pull of the
 * name must have its element count. */
int gobps_declare_shape(const char *name, int dtype, int ndim, const int64_t *dims, int root);

/* gobps_push_pull starts reducing the count elements of dtype at data over
 * all workers, in place: when the handle completes, data holds the sum
 * (GOBPS_SUM) or the mean (GOBPS_AVERAGE) over all workers. It returns at
 * once with *handle set; see "Memory" above for what the caller may do with
 * data meanwhile. The tensor is declared under name on first use. Every
 * worker must call push_pull for a name the same number of times; the k-th
 * calls of all workers are reduced together. count may be 0 (data may then
 * be NULL): the handle is complete at once. */
int gobps_push_pull(const char *name, void *data, int dtype, int64_t count,
                    int op, gobps_handle_t *handle);

/* gobps_push_pull_cuda is gobps_push_pull for a tensor in GPU memory:
 * data is a device pointer on CUDA device `device`, and stream is the
 * framework's CUDA stream (a CUstream; NULL for the default stream) on
 * which the kernels that write the gradient were queued. gobps copies the
 * gradient out on its own high-priority stream once that queued work is
 * done (the caller does not synchronize), reduces it, and copies the result
 * back into data before the handle completes. Each such tensor gets a
 * pinned host staging buffer of its size, allocated on first use and kept.
 * Without a CUDA driver (libcuda.so.1) it fails with
 * GOBPS_ERR_NOT_SUPPORTED. Added in API version 2. */
int gobps_push_pull_cuda(const char *name, void *data, int dtype, int64_t count,
                         int op, int device, void *stream, gobps_handle_t *handle);

/* gobps_broadcast starts copying root's count elements at data into every
 * worker's data, in place and asynchronously, like gobps_push_pull. The
 * tensor is declared under name, for broadcast from root, on first use. */
int gobps_broadcast(const char *name, void *data, int dtype, int64_t count,
                    int root, gobps_handle_t *handle);

/* gobps_poll sets *done to 1 if the handle has completed (successfully or
 * not) and to 0 if it is still running. It does not consume the handle. */
int gobps_poll(gobps_handle_t handle, int *done);

/* gobps_wait waits until the handle completes, at most timeout_ms
 * milliseconds (a negative timeout waits as long as it takes; 0 only
 * checks). If the handle completed, it is consumed and gobps_wait returns
 * the operation's status: GOBPS_OK, or the error that failed it
 * (gobps_last_error says why). If not, it returns GOBPS_ERR_TIMEOUT and the
 * handle stays valid. */
int gobps_wait(gobps_handle_t handle, int64_t timeout_ms);

#ifdef __cplusplus
}
#endif

#endif /* GOBPS_H */
