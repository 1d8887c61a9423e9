/* symcopy: one-pass copy with SHA-256, sparse-aware; see symcopy.c. */
#ifndef SYMCOPY_H
#define SYMCOPY_H

#include <stddef.h>
#include <stdint.h>

/* Called from the calling thread at most every `progress_every` bytes of logical size; a
 * non-zero return stops the copy (error ECANCELED). */
typedef int (*sy_progress_fn)(void *ctx, uint64_t done);

typedef struct sy_result {
    unsigned char sha256[32];
    uint64_t size;       /* logical size of the destination */
    uint64_t data_bytes; /* bytes actually written (holes and zero blocks excluded) */
    int error;           /* errno of the first failure, 0 on success */
    char message[256];   /* what failed, for the error */
} sy_result;

/* Copy in_fd (from its start) to out_fd (an empty file), hashing every logical byte. */
int sy_copy_hash(int in_fd, int out_fd, sy_progress_fn progress, void *ctx,
                 uint64_t progress_every, sy_result *result);

/* The same without hashing: cost grows with the data, not the virtual size. */
int sy_copy_sparse(int in_fd, int out_fd, sy_progress_fn progress, void *ctx,
                   uint64_t progress_every, sy_result *result);

/* Streaming: hash and write buffers as they arrive (an HTTP upload). */
typedef struct sy_stream sy_stream;
sy_stream *sy_stream_new(int out_fd);
int sy_stream_write(sy_stream *stream, const unsigned char *data, size_t length);
int sy_stream_finish(sy_stream *stream, sy_result *result);
void sy_stream_free(sy_stream *stream);

/* Which SHA-256 the module uses (OpenSSL picks SHA-NI/AVX code itself). */
const char *sy_backend(void);

#endif
