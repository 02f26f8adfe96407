// capi exercises libgobps.so through gobps.h, the way a C or C++ framework
// plugin would. capi_test.go builds and runs it.
//
//   capi noinit   calls every function with no job: before init, with bad
//                 arguments and with an empty environment. Needs no job.
//   capi job      under bpsrun --local -np 2: reductions, broadcasts,
//                 timeouts, bad calls, threads, shutdown.
#include <math.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gobps.h"

static int failures;
static int rank_ = -1;

#define CHECK(cond, ...)                                                      \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "FAIL rank %d %s:%d: %s: ", rank_,    \
			        __FILE__, __LINE__, #cond);                   \
			fprintf(stderr, __VA_ARGS__);                         \
			fprintf(stderr, " (last error: %s)\n",                \
			        gobps_last_error());                          \
			failures++;                                           \
		}                                                             \
	} while (0)

// EXPECT checks a call's status and, for an error, that the last error
// mentions want.
#define EXPECT(call, code, want)                                              \
	do {                                                                  \
		int rc_ = (call);                                             \
		CHECK(rc_ == (code), "%s returned %d, want %d", #call, rc_,   \
		      (code));                                                \
		if (rc_ == (code) && (code) != GOBPS_OK)                      \
			CHECK(strstr(gobps_last_error(), (want)) != NULL,     \
			      "%s: last error %s lacks %s", #call,            \
			      gobps_last_error(), (want));                    \
	} while (0)

static void *thread_error(void *arg) {
	const char **seen = arg;
	seen[0] = strdup(gobps_last_error()); // this thread failed nothing yet
	int r;
	gobps_size(&r);
	seen[1] = strdup(gobps_last_error());
	return NULL;
}

static int noinit(void) {
	int v = 12345, done = 7;
	gobps_handle_t h = 99;
	float x[4] = {0};
	CHECK(gobps_api_version() == GOBPS_API_VERSION, "version %d", gobps_api_version());
	CHECK(strcmp(gobps_last_error(), "") == 0, "fresh thread has error %s", gobps_last_error());
	EXPECT(gobps_rank(&v), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	CHECK(v == 12345, "rank wrote %d on failure", v);
	EXPECT(gobps_size(&v), GOBPS_ERR_NOT_INITIALIZED, "gobps_init");
	EXPECT(gobps_local_rank(&v), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_local_size(&v), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_declare("a", GOBPS_FLOAT32, 4), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_declare_broadcast("a", GOBPS_FLOAT32, 4, 0), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_declare_shape("a", GOBPS_FLOAT32, 0, NULL, -1), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_join(0), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_reserve("a"), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_suspend(0), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_resume(1, 1, 0), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_push_pull("a", x, GOBPS_FLOAT32, 4, GOBPS_SUM, &h), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	CHECK(h == 99, "push_pull wrote handle %lld on failure", (long long)h);
	EXPECT(gobps_broadcast("a", x, GOBPS_FLOAT32, 4, 0, &h), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_push_pull_cuda("a", (void *)0x1000, GOBPS_FLOAT32, 4, GOBPS_SUM, 0, NULL, &h), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_poll(1, &done), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	CHECK(done == 7, "poll wrote %d on failure", done);
	EXPECT(gobps_wait(1, -1), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_wait(0, 0), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	EXPECT(gobps_shutdown(), GOBPS_ERR_NOT_INITIALIZED, "not initialized");

	// Bad arguments are caught whatever the state.
	EXPECT(gobps_rank(NULL), GOBPS_ERR_INVALID_ARGUMENT, "NULL");
	EXPECT(gobps_poll(1, NULL), GOBPS_ERR_INVALID_ARGUMENT, "NULL");
	EXPECT(gobps_push_pull(NULL, x, GOBPS_FLOAT32, 4, GOBPS_SUM, &h), GOBPS_ERR_INVALID_ARGUMENT, "NULL tensor name");
	EXPECT(gobps_push_pull("a", x, GOBPS_FLOAT32, 4, GOBPS_SUM, NULL), GOBPS_ERR_INVALID_ARGUMENT, "NULL handle");
	EXPECT(gobps_push_pull("a", x, 0, 4, GOBPS_SUM, &h), GOBPS_ERR_INVALID_ARGUMENT, "unknown dtype 0");
	EXPECT(gobps_push_pull("a", x, 300, 4, GOBPS_SUM, &h), GOBPS_ERR_INVALID_ARGUMENT, "unknown dtype 300");
	EXPECT(gobps_push_pull("a", x, GOBPS_FLOAT32, -1, GOBPS_SUM, &h), GOBPS_ERR_INVALID_ARGUMENT, "negative");
	EXPECT(gobps_push_pull("a", NULL, GOBPS_FLOAT32, 4, GOBPS_SUM, &h), GOBPS_ERR_INVALID_ARGUMENT, "NULL data");
	EXPECT(gobps_broadcast("a", x, GOBPS_FLOAT32, 4, 0, NULL), GOBPS_ERR_INVALID_ARGUMENT, "NULL handle");

	// The last error is per thread.
	const char *seen[2] = {0};
	pthread_t th;
	pthread_create(&th, NULL, thread_error, seen);
	pthread_join(th, NULL);
	CHECK(seen[0] && strcmp(seen[0], "") == 0, "new thread saw error %s", seen[0]);
	CHECK(seen[1] && strstr(seen[1], "not initialized"), "thread's own error %s", seen[1]);
	CHECK(strstr(gobps_last_error(), "NULL handle") != NULL, "main thread's error became %s", gobps_last_error());

	// With no job in the environment, init names what is missing.
	EXPECT(gobps_init(1000), GOBPS_ERR_CONFIG, "DMLC_ROLE");
	EXPECT(gobps_rank(&v), GOBPS_ERR_NOT_INITIALIZED, "not initialized");
	return failures;
}

struct worker_arg {
	int idx;
	int errors;
};

// threaded push_pulls: each thread reduces its own (pre-declared) tensor.
static void *worker(void *p) {
	struct worker_arg *a = p;
	char name[32];
	snprintf(name, sizeof name, "thread.%d", a->idx);
	double buf[1000];
	for (int step = 0; step < 20; step++) {
		for (int i = 0; i < 1000; i++)
			buf[i] = rank_ + a->idx + step + i;
		gobps_handle_t h;
		if (gobps_push_pull(name, buf, GOBPS_FLOAT64, 1000, GOBPS_SUM, &h) != GOBPS_OK ||
		    gobps_wait(h, -1) != GOBPS_OK) {
			fprintf(stderr, "FAIL thread %d step %d: %s\n", a->idx, step, gobps_last_error());
			a->errors++;
			return NULL;
		}
		for (int i = 0; i < 1000; i++) {
			double want = 2.0 * (a->idx + step + i) + 1; // ranks 0 and 1
			if (buf[i] != want) {
				fprintf(stderr, "FAIL thread %d step %d [%d] = %g want %g\n", a->idx, step, i, buf[i], want);
				a->errors++;
				return NULL;
			}
		}
	}
	return NULL;
}

static int job(void) {
	int size = 0, lr = -1, ls = 0;
	EXPECT(gobps_init(60000), GOBPS_OK, "");
	EXPECT(gobps_init(60000), GOBPS_OK, ""); // again: nothing to do
	EXPECT(gobps_rank(&rank_), GOBPS_OK, "");
	EXPECT(gobps_size(&size), GOBPS_OK, "");
	EXPECT(gobps_local_rank(&lr), GOBPS_OK, "");
	EXPECT(gobps_local_size(&ls), GOBPS_OK, "");
	CHECK(size == 2 && lr == rank_ && ls == 2 && (rank_ == 0 || rank_ == 1),
	      "rank %d size %d local %d/%d", rank_, size, lr, ls);
	if (failures)
		return failures;

	// Declare in the same order on both ranks (threads use these later).
	for (int i = 0; i < 4; i++) {
		char name[32];
		snprintf(name, sizeof name, "thread.%d", i);
		EXPECT(gobps_declare(name, GOBPS_FLOAT64, 1000), GOBPS_OK, "");
	}
	EXPECT(gobps_declare("thread.0", GOBPS_FLOAT64, 1000), GOBPS_OK, "");
	EXPECT(gobps_declare("thread.0", GOBPS_FLOAT32, 1000), GOBPS_ERR_INVALID_ARGUMENT, "declared as 1000 elements of float64");
	EXPECT(gobps_declare("thread.0", GOBPS_FLOAT64, 999), GOBPS_ERR_INVALID_ARGUMENT, "now used as 999");
	EXPECT(gobps_declare("", GOBPS_FLOAT64, 1), GOBPS_ERR_INVALID_ARGUMENT, "empty tensor name");
	EXPECT(gobps_declare_broadcast("b.bad", GOBPS_FLOAT64, 1, 2), GOBPS_ERR_INVALID_ARGUMENT, "root 2 is not a rank");
	EXPECT(gobps_declare_broadcast("b.bad", GOBPS_FLOAT64, 1, -1), GOBPS_ERR_INVALID_ARGUMENT, "root -1 is not a rank");

	// Reserved names keep their places: rank 1 uses them in the other
	// order (the sums are checked below, with the other tensors').
	EXPECT(gobps_reserve("res.a"), GOBPS_OK, "");
	EXPECT(gobps_reserve("res.b"), GOBPS_OK, "");
	EXPECT(gobps_reserve(""), GOBPS_ERR_INVALID_ARGUMENT, "");
	{
		float ra[2] = {1, 1}, rb[3] = {10, 10, 10};
		gobps_handle_t ha = 0, hb = 0;
		if (rank_ == 0) {
			EXPECT(gobps_push_pull("res.a", ra, GOBPS_FLOAT32, 2, GOBPS_SUM, &ha), GOBPS_OK, "");
			EXPECT(gobps_push_pull("res.b", rb, GOBPS_FLOAT32, 3, GOBPS_SUM, &hb), GOBPS_OK, "");
		} else {
			EXPECT(gobps_push_pull("res.b", rb, GOBPS_FLOAT32, 3, GOBPS_SUM, &hb), GOBPS_OK, "");
			EXPECT(gobps_push_pull("res.a", ra, GOBPS_FLOAT32, 2, GOBPS_SUM, &ha), GOBPS_OK, "");
		}
		EXPECT(gobps_wait(ha, 30000), GOBPS_OK, "");
		EXPECT(gobps_wait(hb, 30000), GOBPS_OK, "");
		CHECK(ra[1] == 2 && rb[2] == 20, "reserved sums %g %g, want 2 20", ra[1], rb[2]);
	}

	// Shapes: checked here against later uses, and by the servers
	// against the other rank's.
	const int64_t dims23[2] = {2, 3}, dims32[2] = {3, 2}, dimsneg[1] = {-1};
	EXPECT(gobps_declare_shape("shape.w", GOBPS_FLOAT32, 2, dims23, -1), GOBPS_OK, "");
	EXPECT(gobps_declare_shape("shape.w", GOBPS_FLOAT32, 2, dims23, -1), GOBPS_OK, "");
	EXPECT(gobps_declare_shape("shape.w", GOBPS_FLOAT32, 2, dims32, -1), GOBPS_ERR_INVALID_ARGUMENT, "declared as float32[2 3]");
	EXPECT(gobps_declare("shape.w", GOBPS_FLOAT32, 6), GOBPS_OK, "");
	EXPECT(gobps_declare("shape.w", GOBPS_FLOAT32, 5), GOBPS_ERR_INVALID_ARGUMENT, "now used as 5 elements");
	EXPECT(gobps_declare_shape("shape.bad", GOBPS_FLOAT32, 1, dimsneg, -1), GOBPS_ERR_INVALID_ARGUMENT, "negative dimension");
	EXPECT(gobps_declare_shape("shape.bad", GOBPS_FLOAT32, 33, dims23, -1), GOBPS_ERR_INVALID_ARGUMENT, "33 dimensions");
	EXPECT(gobps_declare_shape("shape.bad", GOBPS_FLOAT32, 2, NULL, -1), GOBPS_ERR_INVALID_ARGUMENT, "NULL dims");
	EXPECT(gobps_declare_shape("shape.bad", GOBPS_FLOAT32, 0, NULL, 5), GOBPS_ERR_INVALID_ARGUMENT, "root 5 is not a rank");
	EXPECT(gobps_declare_shape("shape.scalar", GOBPS_FLOAT32, 0, NULL, -1), GOBPS_OK, "");
	{
		float one = (float)(rank_ + 1);
		gobps_handle_t hs = 0;
		EXPECT(gobps_push_pull("shape.scalar", &one, GOBPS_FLOAT32, 1, GOBPS_SUM, &hs), GOBPS_OK, "");
		EXPECT(gobps_wait(hs, 30000), GOBPS_OK, "");
		CHECK(one == 3.0f, "scalar sum %g, want 3", one);
	}

	// float32 average over a tensor of several partitions (4 MiB each).
	const int64_t n = 3 * 1024 * 1024 + 17;
	float *f = malloc(n * sizeof *f);
	for (int64_t i = 0; i < n; i++)
		f[i] = (float)(rank_ * 2 + (i % 1000));
	gobps_handle_t h = 0;
	EXPECT(gobps_push_pull("big", f, GOBPS_FLOAT32, n, GOBPS_AVERAGE, &h), GOBPS_OK, "");
	CHECK(h > 0, "handle %lld", (long long)h);
	EXPECT(gobps_wait(h, 30000), GOBPS_OK, "");
	for (int64_t i = 0; i < n; i++) {
		float want = (float)(1 + (i % 1000)); // mean of x and x+2
		if (f[i] != want) {
			CHECK(0, "big[%lld] = %g, want %g", (long long)i, f[i], want);
			break;
		}
	}
	EXPECT(gobps_wait(h, 0), GOBPS_ERR_BAD_HANDLE, "already consumed");
	EXPECT(gobps_poll(h, &lr), GOBPS_ERR_BAD_HANDLE, "unknown handle");
	EXPECT(gobps_push_pull("big", f, GOBPS_FLOAT32, n - 1, GOBPS_AVERAGE, &h), GOBPS_ERR_INVALID_ARGUMENT, "declared as");
	EXPECT(gobps_broadcast("big", f, GOBPS_FLOAT32, n, 0, &h), GOBPS_ERR_INVALID_ARGUMENT, "for push_pull");
	free(f);

	// int32 and int64 sums; averaging an integer is refused.
	int32_t i32[3] = {rank_ + 1, -5, 1 << 20};
	EXPECT(gobps_push_pull("i32", i32, GOBPS_INT32, 3, GOBPS_SUM, &h), GOBPS_OK, "");
	EXPECT(gobps_wait(h, -1), GOBPS_OK, "");
	CHECK(i32[0] == 3 && i32[1] == -10 && i32[2] == 2 << 20, "i32 sum %d %d %d", i32[0], i32[1], i32[2]);
	EXPECT(gobps_push_pull("i64", i32, GOBPS_INT64, 1, GOBPS_AVERAGE, &h), GOBPS_ERR_INVALID_ARGUMENT, "cannot average int64");
	EXPECT(gobps_push_pull("i32", i32, GOBPS_INT32, 3, 7, &h), GOBPS_ERR_INVALID_ARGUMENT, "unknown reduce op 7");

	// Tensors in GPU memory: bad arguments, and (where this machine has no
	// CUDA driver, as in CI) a clear NOT_SUPPORTED naming the library.
	EXPECT(gobps_push_pull_cuda("gpu", (void *)0x1000, GOBPS_FLOAT32, 4, GOBPS_SUM, -1, NULL, &h), GOBPS_ERR_INVALID_ARGUMENT, "not a CUDA device");
	EXPECT(gobps_push_pull_cuda("gpu", NULL, GOBPS_FLOAT32, 4, GOBPS_SUM, 0, NULL, &h), GOBPS_ERR_INVALID_ARGUMENT, "NULL device pointer");
	EXPECT(gobps_push_pull_cuda("gpu", (void *)0x1000, GOBPS_FLOAT32, 4, GOBPS_SUM, 0, NULL, NULL), GOBPS_ERR_INVALID_ARGUMENT, "NULL handle");
	void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
	if (cuda == NULL)
		EXPECT(gobps_push_pull_cuda("gpu", (void *)0x1000, GOBPS_FLOAT32, 4, GOBPS_SUM, 0, NULL, &h), GOBPS_ERR_NOT_SUPPORTED, "libcuda.so.1");
	else
		dlclose(cuda);

	// Zero elements: complete at once, NULL data allowed.
	EXPECT(gobps_push_pull("empty", NULL, GOBPS_FLOAT32, 0, GOBPS_SUM, &h), GOBPS_OK, "");
	int done = 0;
	EXPECT(gobps_poll(h, &done), GOBPS_OK, "");
	CHECK(done == 1, "empty push_pull not done");
	EXPECT(gobps_wait(h, 0), GOBPS_OK, "");

	// Broadcast from rank 1 of float64 and uint8.
	double bd[5];
	uint8_t bu[3];
	for (int i = 0; i < 5; i++)
		bd[i] = rank_ == 1 ? i * 1.5 : -1;
	for (int i = 0; i < 3; i++)
		bu[i] = rank_ == 1 ? 200 + i : 0;
	gobps_handle_t h2;
	EXPECT(gobps_broadcast("bd", bd, GOBPS_FLOAT64, 5, 1, &h), GOBPS_OK, "");
	EXPECT(gobps_broadcast("bu", bu, GOBPS_UINT8, 3, 1, &h2), GOBPS_OK, "");
	EXPECT(gobps_wait(h, -1), GOBPS_OK, "");
	EXPECT(gobps_wait(h2, -1), GOBPS_OK, "");
	for (int i = 0; i < 5; i++)
		CHECK(bd[i] == i * 1.5, "bd[%d] = %g", i, bd[i]);
	for (int i = 0; i < 3; i++)
		CHECK(bu[i] == 200 + i, "bu[%d] = %d", i, bu[i]);
	EXPECT(gobps_broadcast("bd", bd, GOBPS_FLOAT64, 5, 0, &h), GOBPS_ERR_INVALID_ARGUMENT, "broadcast from rank 1");
	EXPECT(gobps_push_pull("bd", bd, GOBPS_FLOAT64, 5, GOBPS_SUM, &h), GOBPS_ERR_INVALID_ARGUMENT, "broadcast from rank 1");
	EXPECT(gobps_broadcast("bx", bd, GOBPS_FLOAT64, 5, 2, &h), GOBPS_ERR_INVALID_ARGUMENT, "root 2 is not a rank");

	// A handle that cannot complete yet: rank 1 pushes 300 ms late.
	float late[2] = {1, 2};
	if (rank_ == 1)
		usleep(300 * 1000);
	EXPECT(gobps_push_pull("late", late, GOBPS_FLOAT32, 2, GOBPS_SUM, &h), GOBPS_OK, "");
	if (rank_ == 0) {
		done = 1;
		EXPECT(gobps_poll(h, &done), GOBPS_OK, "");
		CHECK(done == 0, "late push_pull done before rank 1 pushed");
		EXPECT(gobps_wait(h, 20), GOBPS_ERR_TIMEOUT, "not done after 20ms");
		EXPECT(gobps_wait(h, 0), GOBPS_ERR_TIMEOUT, "not done");
	}
	EXPECT(gobps_wait(h, 30000), GOBPS_OK, "");
	CHECK(late[0] == 2 && late[1] == 4, "late sum %g %g", late[0], late[1]);
	EXPECT(gobps_wait(h, -1), GOBPS_ERR_BAD_HANDLE, "unknown handle");
	EXPECT(gobps_wait(0, -1), GOBPS_ERR_BAD_HANDLE, "unknown handle 0");

	// Workers that start tensors in different orders must not wait on each
	// other: y (4 partitions) is declared before x (16), so it has the
	// higher priority; rank 0 starts x and y at once, rank 1 starts y only
	// after its x has been sent. With a credit held until the sums return,
	// rank 0 would send y ahead of the rest of x and both ranks would wait
	// forever (core returns the credit once a push is sent; see
	// TestCreditNoCrossWorkerDeadlock).
	{
		const int64_t ny = 4 << 20, nx = 16 << 20; // floats: 16 MiB, 64 MiB
		float *y = malloc(ny * sizeof *y), *x = malloc(nx * sizeof *x);
		for (int64_t i = 0; i < ny; i++)
			y[i] = 1;
		for (int64_t i = 0; i < nx; i++)
			x[i] = 2;
		gobps_handle_t hx = 0, hy = 0;
		EXPECT(gobps_declare("order.y", GOBPS_FLOAT32, ny), GOBPS_OK, "");
		EXPECT(gobps_declare("order.x", GOBPS_FLOAT32, nx), GOBPS_OK, "");
		EXPECT(gobps_push_pull("order.x", x, GOBPS_FLOAT32, nx, GOBPS_SUM, &hx), GOBPS_OK, "");
		if (rank_ == 1)
			usleep(300 * 1000);
		EXPECT(gobps_push_pull("order.y", y, GOBPS_FLOAT32, ny, GOBPS_SUM, &hy), GOBPS_OK, "");
		EXPECT(gobps_wait(hx, 20000), GOBPS_OK, "");
		EXPECT(gobps_wait(hy, 20000), GOBPS_OK, "");
		if (failures)
			return failures; // x and y may still be written: exit without freeing them
		CHECK(x[0] == 4 && x[nx - 1] == 4 && y[0] == 2 && y[ny - 1] == 2, "order sums %g %g %g %g",
		      x[0], x[nx - 1], y[0], y[ny - 1]);
		free(x);
		free(y);
	}

	// Four threads reduce their own tensors concurrently.
	pthread_t th[4];
	struct worker_arg args[4];
	for (int i = 0; i < 4; i++) {
		args[i] = (struct worker_arg){.idx = i};
		pthread_create(&th[i], NULL, worker, &args[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		failures += args[i].errors;
	}

	// Uneven inputs: rank 0 has one batch, rank 1 three; rank 0 joins and
	// answers rank 1's last two rounds with zeros.
	{
		for (int step = 0; step < 1 + 2 * rank_; step++) {
			float g[3] = {(float)(rank_ + 1), 10, 100};
			gobps_handle_t hj = 0;
			EXPECT(gobps_push_pull("uneven", g, GOBPS_FLOAT32, 3, GOBPS_SUM, &hj), GOBPS_OK, "");
			EXPECT(gobps_wait(hj, 30000), GOBPS_OK, "");
			float want = step == 0 ? 3 : 2; // both ranks, then rank 1 alone
			CHECK(g[0] == want && g[1] == (step == 0 ? 20 : 10), "uneven step %d: %g %g, want %g", step, g[0], g[1], want);
		}
		EXPECT(gobps_join(30000), GOBPS_OK, "");
	}

	// Suspend and resume, the same size.
	EXPECT(gobps_suspend(30000), GOBPS_OK, "");
	{
		float z = 1;
		gobps_handle_t hz = 0;
		EXPECT(gobps_push_pull("uneven", &z, GOBPS_FLOAT32, 1, GOBPS_SUM, &hz), GOBPS_ERR_INVALID_ARGUMENT, "now used as 1 elements");
		float g3[3] = {1, 1, 1};
		EXPECT(gobps_push_pull("uneven", g3, GOBPS_FLOAT32, 3, GOBPS_SUM, &hz), GOBPS_ERR_FAILED, "suspended");
	}
	EXPECT(gobps_resume(4, 2, 30000), GOBPS_ERR_INVALID_ARGUMENT, "not implemented");
	EXPECT(gobps_resume(2, 2, 30000), GOBPS_OK, "");

	// A final barrier, so that neither rank leaves while the other still
	// needs the servers, then shutdown.
	float one = 1;
	EXPECT(gobps_push_pull("barrier", &one, GOBPS_FLOAT32, 1, GOBPS_SUM, &h), GOBPS_OK, "");
	EXPECT(gobps_wait(h, 30000), GOBPS_OK, "");
	EXPECT(gobps_shutdown(), GOBPS_OK, "");
	EXPECT(gobps_shutdown(), GOBPS_ERR_NOT_INITIALIZED, "already shut down");
	EXPECT(gobps_rank(&lr), GOBPS_ERR_NOT_INITIALIZED, "shut down");
	EXPECT(gobps_push_pull("i32", i32, GOBPS_INT32, 3, GOBPS_SUM, &h), GOBPS_ERR_NOT_INITIALIZED, "shut down");
	EXPECT(gobps_wait(12345, 0), GOBPS_ERR_BAD_HANDLE, "unknown handle");
	EXPECT(gobps_init(1000), GOBPS_ERR_FAILED, "only once");
	if (failures == 0)
		printf("capi job: rank %d ok\n", rank_);
	return failures;
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: capi noinit|job\n");
		return 2;
	}
	int f;
	if (strcmp(argv[1], "noinit") == 0) {
		f = noinit();
		if (f == 0)
			printf("capi noinit: ok\n");
	} else if (strcmp(argv[1], "job") == 0) {
		f = job();
	} else {
		fprintf(stderr, "capi: unknown mode %s\n", argv[1]);
		return 2;
	}
	return f ? 1 : 0;
}
