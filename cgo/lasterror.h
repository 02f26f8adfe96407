// Internal to libgobps: not part of the API (see gobps.h).
#ifndef GOBPS_LASTERROR_H
#define GOBPS_LASTERROR_H

// gobps_set_last_error makes msg, a malloc'd string whose ownership passes to
// the library, the calling thread's last error, and frees the previous one.
__attribute__((visibility("hidden"))) void gobps_set_last_error(char *msg);

#endif
