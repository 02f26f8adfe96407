// The per-thread last-error string behind gobps_last_error.
//
// Go code cannot own thread-local storage, but an exported Go function runs
// on the C thread that called it, and so does every C function it calls: the
// Go side hands each failure's message to gobps_set_last_error, which keeps
// it in a pthread key of the calling thread. The key's destructor frees the
// message when the thread exits.

#include <pthread.h>
#include <stdlib.h>

#include "gobps.h"
#include "lasterror.h"

static pthread_key_t last_error_key;
static pthread_once_t last_error_once = PTHREAD_ONCE_INIT;
static int last_error_ok; // the key was created

static void make_key(void) {
	last_error_ok = pthread_key_create(&last_error_key, free) == 0;
}

void gobps_set_last_error(char *msg) {
	pthread_once(&last_error_once, make_key);
	if (!last_error_ok) {
		free(msg);
		return;
	}
	char *old = pthread_getspecific(last_error_key);
	if (pthread_setspecific(last_error_key, msg) != 0) {
		free(msg);
		return;
	}
	free(old);
}

const char *gobps_last_error(void) {
	pthread_once(&last_error_once, make_key);
	if (!last_error_ok) {
		return "gobps: cannot keep error messages (pthread_key_create failed)";
	}
	const char *msg = pthread_getspecific(last_error_key);
	return msg ? msg : "";
}
