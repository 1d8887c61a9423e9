"""cffi build script (API out-of-line mode) for symphonyd.image._symcopy.

Used by setup.py (`cffi_modules`); run directly to build in place for development:
`python native/build_symcopy.py`.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef(
    """
    typedef int (*sy_progress_fn)(void *ctx, uint64_t done);
    typedef struct sy_result {
        unsigned char sha256[32];
        uint64_t size;
        uint64_t data_bytes;
        int error;
        char message[256];
    } sy_result;
    int sy_copy_hash(int in_fd, int out_fd, sy_progress_fn progress, void *ctx,
                     uint64_t progress_every, sy_result *result);
    int sy_copy_sparse(int in_fd, int out_fd, sy_progress_fn progress, void *ctx,
                       uint64_t progress_every, sy_result *result);
    typedef struct sy_stream sy_stream;
    sy_stream *sy_stream_new(int out_fd);
    int sy_stream_write(sy_stream *stream, const unsigned char *data, size_t length);
    int sy_stream_finish(sy_stream *stream, sy_result *result);
    void sy_stream_free(sy_stream *stream);
    const char *sy_backend(void);
    extern "Python" int sy_progress_callback(void *ctx, uint64_t done);
    """
)
ffibuilder.set_source(
    "symphonyd.image._symcopy",
    '#include "symcopy.h"',
    sources=["native/symcopy.c"],  # relative to the project root, where setup.py runs
    include_dirs=["native"],
    libraries=["crypto"],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    import os

    os.chdir(HERE.parent)
    ffibuilder.compile(verbose=True)
