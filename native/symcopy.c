/*
 * symcopy: copy a file once while computing its SHA-256, keeping it sparse.
 *
 * sy_copy_hash runs a three-stage pipeline over a ring of 1 MiB buffers:
 *   reader thread  - walks the source's data extents (SEEK_DATA/SEEK_HOLE) and reads;
 *   calling thread - hashes every logical byte (holes hash as zeros) with OpenSSL's
 *                    EVP SHA-256, which uses the CPU's SHA extensions when present;
 *   writer thread  - writes the non-zero 4 KiB blocks of each buffer with pwrite, so
 *                    holes and all-zero blocks stay holes in the destination.
 * The caller holds no Python lock while this runs (cffi releases the GIL), so the three
 * stages overlap and a dense file goes at about the speed of SHA-256 on one core.
 *
 * The writer also starts the kernel's writeback of what it wrote (sync_file_range), so the
 * fsync that makes an import durable finds little left to do.
 *
 * sy_copy_sparse copies only the data (no hash); sy_stream_* hash and write buffers
 * handed in by the caller (an HTTP upload). On any failure the functions return -1 with
 * result->error (an errno) and result->message set; the caller removes the destination.
 */
#define _GNU_SOURCE
#include "symcopy.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SY_BUF (1u << 20)
#define SY_SLOTS 8
#define SY_GRAIN 4096u

static const unsigned char ZEROS[SY_BUF];

const char *sy_backend(void) { return "openssl-evp-sha256"; }

static int fail(sy_result *r, int err, const char *what) {
    if (r->error == 0) {
        r->error = err ? err : EIO;
        snprintf(r->message, sizeof r->message, "%s: %s", what, strerror(r->error));
    }
    return -1;
}

static int is_zero(const unsigned char *p, size_t n) {
    const uint64_t *w = (const uint64_t *)p;
    size_t words = n / 8;
    for (size_t i = 0; i < words; i++)
        if (w[i]) return 0;
    for (size_t i = words * 8; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

/* Write the non-zero SY_GRAIN blocks of buf (a run of them in one pwrite). */
static int write_nonzero(int fd, const unsigned char *buf, size_t len, uint64_t off,
                         uint64_t *written, sy_result *r) {
    size_t pos = 0;
    while (pos < len) {
        size_t n = len - pos < SY_GRAIN ? len - pos : SY_GRAIN;
        if (is_zero(buf + pos, n)) {
            pos += n;
            continue;
        }
        size_t start = pos;
        while (pos < len) {
            n = len - pos < SY_GRAIN ? len - pos : SY_GRAIN;
            if (is_zero(buf + pos, n)) break;
            pos += n;
        }
        size_t done = 0;
        while (done < pos - start) {
            ssize_t w = pwrite(fd, buf + start + done, pos - start - done, off + start + done);
            if (w < 0) {
                if (errno == EINTR) continue;
                return fail(r, errno, "write");
            }
            if (w == 0) return fail(r, ENOSPC, "write");
            done += (size_t)w;
        }
        *written += pos - start;
    }
    return 0;
}

/* Ask the kernel to start writing [off, off+len) back now (no wait; errors ignored: the
 * fsync at the end reports any that matter). */
static void start_writeback(int fd, uint64_t off, uint64_t len) {
    (void)sync_file_range(fd, (off_t)off, (off_t)len, SYNC_FILE_RANGE_WRITE);
}

static int read_full(int fd, unsigned char *buf, size_t len, uint64_t off, sy_result *r) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, buf + done, len - done, off + done);
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail(r, errno, "read");
        }
        if (n == 0) return fail(r, EIO, "read: the source shrank while being copied (short read)");
        done += (size_t)n;
    }
    return 0;
}

/* Next data extent at or after `off`: [*data, *hole). Returns 0, or 1 at end of file. */
static int next_extent(int fd, uint64_t off, uint64_t size, uint64_t *data, uint64_t *hole) {
    off_t d = lseek(fd, (off_t)off, SEEK_DATA);
    if (d < 0) {
        if (errno == ENXIO) return 1; /* only a hole remains */
        /* no SEEK_DATA support: treat everything as data */
        *data = off;
        *hole = size;
        return 0;
    }
    off_t h = lseek(fd, d, SEEK_HOLE);
    *data = (uint64_t)d > size ? size : (uint64_t)d;
    *hole = h < 0 ? size : ((uint64_t)h > size ? size : (uint64_t)h);
    if (*hole <= *data && *data < size) *hole = size; /* a filesystem that says nothing useful */
    return 0;
}

/* ---- the pipeline of sy_copy_hash -------------------------------------------------- */

enum { FREE, READ, HASHED };

typedef struct {
    unsigned char *mem; /* this slot's buffer, allocated on first use */
    unsigned char *buf; /* mem for a data job, NULL for a hole job */
    uint64_t off, len;
    int state;
} slot_t;

typedef struct {
    int in_fd, out_fd;
    uint64_t size;
    slot_t slots[SY_SLOTS];
    uint64_t produced; /* jobs queued by the reader; total once reader_done */
    int reader_done, writer_done, abort;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    sy_result *r;
    sy_result reader_r, writer_r;
    uint64_t written;
} pipe_t;

static void *reader_main(void *arg) {
    pipe_t *p = arg;
    uint64_t off = 0, seq = 0;
    while (off < p->size) {
        uint64_t data, hole;
        if (next_extent(p->in_fd, off, p->size, &data, &hole)) data = hole = p->size;
        /* the hole [off, data) then the data [data, hole), in jobs of at most SY_BUF */
        uint64_t end = data > off ? data : hole;
        int is_hole = data > off;
        while (off < end) {
            uint64_t len = end - off < SY_BUF ? end - off : SY_BUF;
            slot_t *s = &p->slots[seq % SY_SLOTS];
            pthread_mutex_lock(&p->lock);
            while (s->state != FREE && !p->abort) pthread_cond_wait(&p->changed, &p->lock);
            int stop = p->abort;
            pthread_mutex_unlock(&p->lock);
            if (stop) goto done;
            s->off = off;
            s->len = len;
            if (is_hole) {
                s->buf = NULL;
            } else {
                if (!s->mem && !(s->mem = malloc(SY_BUF))) {
                    fail(&p->reader_r, ENOMEM, "memory");
                    goto failed;
                }
                s->buf = s->mem;
                if (read_full(p->in_fd, s->buf, len, off, &p->reader_r)) goto failed;
            }
            pthread_mutex_lock(&p->lock);
            s->state = READ;
            p->produced = ++seq;
            pthread_cond_broadcast(&p->changed);
            pthread_mutex_unlock(&p->lock);
            off += len;
        }
    }
done:
    pthread_mutex_lock(&p->lock);
    p->reader_done = 1;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    return NULL;
failed:
    pthread_mutex_lock(&p->lock);
    p->abort = 1;
    p->reader_done = 1;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static void *writer_main(void *arg) {
    pipe_t *p = arg;
    uint64_t seq = 0;
    for (;;) {
        slot_t *s = &p->slots[seq % SY_SLOTS];
        pthread_mutex_lock(&p->lock);
        while (s->state != HASHED && !p->abort && !(p->reader_done && seq >= p->produced))
            pthread_cond_wait(&p->changed, &p->lock);
        int stop = p->abort || (s->state != HASHED);
        pthread_mutex_unlock(&p->lock);
        if (stop) break;
        int bad = s->buf && write_nonzero(p->out_fd, s->buf, s->len, s->off, &p->written,
                                          &p->writer_r);
        if (!bad && s->buf) start_writeback(p->out_fd, s->off, s->len);
        pthread_mutex_lock(&p->lock);
        s->state = FREE;
        if (bad) p->abort = 1;
        pthread_cond_broadcast(&p->changed);
        pthread_mutex_unlock(&p->lock);
        if (bad) break;
        seq++;
    }
    pthread_mutex_lock(&p->lock);
    p->writer_done = 1;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static int hash_zeros(EVP_MD_CTX *md, uint64_t len) {
    while (len) {
        size_t n = len < SY_BUF ? (size_t)len : SY_BUF;
        if (EVP_DigestUpdate(md, ZEROS, n) != 1) return -1;
        len -= n;
    }
    return 0;
}

static int source_size(int fd, uint64_t *size, sy_result *r) {
    struct stat st;
    if (fstat(fd, &st) < 0) return fail(r, errno, "stat of the source");
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        return fail(r, EINVAL, "the source is not a regular file");
    if (S_ISBLK(st.st_mode)) {
        off_t end = lseek(fd, 0, SEEK_END);
        if (end < 0) return fail(r, errno, "size of the source");
        *size = (uint64_t)end;
    } else {
        *size = (uint64_t)st.st_size;
    }
    return 0;
}

static int set_size(int fd, uint64_t size, sy_result *r) {
    struct stat st;
    if (fstat(fd, &st) < 0) return fail(r, errno, "stat of the destination");
    if (S_ISBLK(st.st_mode)) {
        /* a device keeps its size; zeroing what the copy skipped is the caller's job */
        off_t end = lseek(fd, 0, SEEK_END);
        if (end < 0) return fail(r, errno, "size of the destination");
        if ((uint64_t)end < size) return fail(r, ENOSPC, "the destination device is too small");
        return 0;
    }
    /* a trailing hole exists only once the file has its full length */
    while (ftruncate(fd, (off_t)size) < 0) {
        if (errno != EINTR) return fail(r, errno, "setting the destination's size");
    }
    return 0;
}

int sy_copy_hash(int in_fd, int out_fd, sy_progress_fn progress, void *ctx,
                 uint64_t progress_every, sy_result *r) {
    memset(r, 0, sizeof *r);
    pipe_t p;
    memset(&p, 0, sizeof p);
    p.in_fd = in_fd;
    p.out_fd = out_fd;
    p.r = r;
    if (source_size(in_fd, &p.size, r)) return -1;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return fail(r, ENOMEM, "sha256 init");
    }
    pthread_mutex_init(&p.lock, NULL);
    pthread_cond_init(&p.changed, NULL);
    pthread_t reader, writer;
    if (pthread_create(&reader, NULL, reader_main, &p)) {
        pthread_mutex_destroy(&p.lock);
        pthread_cond_destroy(&p.changed);
        EVP_MD_CTX_free(md);
        return fail(r, EAGAIN, "thread");
    }
    if (pthread_create(&writer, NULL, writer_main, &p)) {
        pthread_mutex_lock(&p.lock);
        p.abort = 1;
        pthread_cond_broadcast(&p.changed);
        pthread_mutex_unlock(&p.lock);
        pthread_join(reader, NULL);
        for (int i = 0; i < SY_SLOTS; i++) free(p.slots[i].mem);
        pthread_mutex_destroy(&p.lock);
        pthread_cond_destroy(&p.changed);
        EVP_MD_CTX_free(md);
        return fail(r, EAGAIN, "thread");
    }
    uint64_t seq = 0, hashed = 0, next_report = progress_every;
    int bad = 0;
    for (;;) {
        slot_t *s = &p.slots[seq % SY_SLOTS];
        pthread_mutex_lock(&p.lock);
        while (s->state != READ && !p.abort && !(p.reader_done && seq >= p.produced))
            pthread_cond_wait(&p.changed, &p.lock);
        int stop = p.abort || s->state != READ;
        pthread_mutex_unlock(&p.lock);
        if (stop) break;
        /* Read the job before handing the slot on: once it is HASHED, the writer frees it
         * and the reader may fill it again. */
        uint64_t len = s->len;
        int hash_bad = s->buf ? EVP_DigestUpdate(md, s->buf, len) != 1
                              : hash_zeros(md, len) != 0;
        pthread_mutex_lock(&p.lock);
        s->state = HASHED;
        if (hash_bad) p.abort = 1;
        pthread_cond_broadcast(&p.changed);
        pthread_mutex_unlock(&p.lock);
        if (hash_bad) {
            bad = fail(r, EIO, "sha256");
            break;
        }
        hashed += len;
        seq++;
        if (progress && progress_every && hashed >= next_report) {
            if (progress(ctx, hashed)) {
                pthread_mutex_lock(&p.lock);
                p.abort = 1;
                pthread_cond_broadcast(&p.changed);
                pthread_mutex_unlock(&p.lock);
                bad = fail(r, ECANCELED, "copy");
                break;
            }
            next_report = hashed + progress_every;
        }
    }
    pthread_join(reader, NULL);
    pthread_join(writer, NULL);
    for (int i = 0; i < SY_SLOTS; i++) free(p.slots[i].mem);
    pthread_mutex_destroy(&p.lock);
    pthread_cond_destroy(&p.changed);
    if (p.reader_r.error) bad = fail(r, p.reader_r.error, p.reader_r.message);
    if (p.writer_r.error) bad = fail(r, p.writer_r.error, p.writer_r.message);
    if (!bad && !r->error && hashed != p.size) bad = fail(r, EIO, "copy stopped early");
    if (r->error) bad = -1;
    unsigned int digest_len = 0;
    if (!bad && EVP_DigestFinal_ex(md, r->sha256, &digest_len) != 1) bad = fail(r, EIO, "sha256");
    EVP_MD_CTX_free(md);
    if (!bad) bad = set_size(out_fd, p.size, r);
    if (bad) return -1;
    r->size = p.size;
    r->data_bytes = p.written;
    if (progress) progress(ctx, hashed);
    return 0;
}

int sy_copy_sparse(int in_fd, int out_fd, sy_progress_fn progress, void *ctx,
                   uint64_t progress_every, sy_result *r) {
    memset(r, 0, sizeof *r);
    uint64_t size;
    if (source_size(in_fd, &size, r)) return -1;
    unsigned char *buf = malloc(SY_BUF);
    if (!buf) return fail(r, ENOMEM, "memory");
    uint64_t off = 0, written = 0, next_report = progress_every;
    int bad = 0;
    while (off < size && !bad) {
        uint64_t data, hole;
        if (next_extent(in_fd, off, size, &data, &hole)) break;
        for (off = data; off < hole && !bad; ) {
            uint64_t len = hole - off < SY_BUF ? hole - off : SY_BUF;
            bad = read_full(in_fd, buf, len, off, r) ||
                  write_nonzero(out_fd, buf, len, off, &written, r);
            off += len;
            if (!bad && progress && progress_every && off >= next_report) {
                if (progress(ctx, off)) bad = fail(r, ECANCELED, "copy");
                next_report = off + progress_every;
            }
        }
    }
    free(buf);
    if (bad || set_size(out_fd, size, r)) return -1;
    r->size = size;
    r->data_bytes = written;
    if (progress) progress(ctx, size);
    return 0;
}

/* ---- streaming ---------------------------------------------------------------------- */

struct sy_stream {
    int out_fd;
    EVP_MD_CTX *md;
    uint64_t off, written;
    sy_result r;
};

sy_stream *sy_stream_new(int out_fd) {
    sy_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->out_fd = out_fd;
    s->md = EVP_MD_CTX_new();
    if (!s->md || EVP_DigestInit_ex(s->md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(s->md);
        free(s);
        return NULL;
    }
    return s;
}

int sy_stream_write(sy_stream *s, const unsigned char *data, size_t length) {
    if (s->r.error) return -1;
    if (EVP_DigestUpdate(s->md, data, length) != 1) return fail(&s->r, EIO, "sha256");
    if (write_nonzero(s->out_fd, data, length, s->off, &s->written, &s->r)) return -1;
    start_writeback(s->out_fd, s->off, length);
    s->off += length;
    return 0;
}

int sy_stream_finish(sy_stream *s, sy_result *r) {
    memset(r, 0, sizeof *r);
    if (s->r.error) {
        *r = s->r;
        return -1;
    }
    unsigned int digest_len = 0;
    if (EVP_DigestFinal_ex(s->md, r->sha256, &digest_len) != 1) return fail(r, EIO, "sha256");
    if (set_size(s->out_fd, s->off, r)) return -1;
    r->size = s->off;
    r->data_bytes = s->written;
    return 0;
}

void sy_stream_free(sy_stream *s) {
    if (!s) return;
    EVP_MD_CTX_free(s->md);
    free(s);
}
