/* cachefs._native: read cached block files straight into one buffer that pyfuse3 can hand to the
 * kernel, with the GIL released for the syscalls and the checksum.
 *
 * Why C: the pure-Python path reads a block into a bytes object, hashes it, then slices and joins
 * to serve a FUSE read that spans two blocks. Here one read fills a buffer the module owns (a
 * block-sized file: read whole with O_DIRECT into a recycled, page-aligned chunk; a smaller one:
 * preadv into malloc()ed memory), xxh3 runs over it in the same pass without the GIL, and the
 * buffer is exported through the buffer protocol, so nothing is copied at Python level. The same
 * recycled chunks receive S3 bodies (buffer()).
 *
 * Block file format (cachefs/cache/disk.py, layout v1): a 32-byte header
 *     magic "CFSBLK01", u64 payload length, u64 xxh3-64 of the payload (seed 0), u64 zero
 * (all big-endian), then the payload. cachefs/native.py holds the Python twin of these rules and
 * tests/unit/test_native.py checks that both agree with disk.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* xxhash from Debian's libxxhash-dev, linked (-lxxhash). On x86 its library has a run-time
 * dispatch to the widest vector unit the CPU has (SSE2/AVX2/AVX-512): about 3x an SSE2-only
 * header-only build, and what the Python xxhash package does too. */
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h>   /* turns XXH3_64bits into XXH3_64bits_dispatch */
#endif

#define HEADER_SIZE 32
static const char MAGIC[8] = {'C', 'F', 'S', 'B', 'L', 'K', '0', '1'};
/* ---- recycled block memory ---------------------------------------------------------------- */

/* The daemon caps glibc's mmap threshold at 128 KiB (cachefs/daemon.py: freed blocks must go back to
 * the OS, or the memory tier's budget is not what RSS shows), so every multi-MiB buffer is a fresh
 * mmap whose pages all fault on first touch: 1,024 faults per 4 MiB block, a sixth of the daemon's
 * CPU on a cold read. Blocks are all one size, so their memory is recycled here instead: a
 * buffer of more than half a chunk (set_pool) takes a chunk from a free list, or maps a new one,
 * and gives it back when the buffer object dies; at most `pool_keep` free chunks are kept (the rest
 * are unmapped), so idle RSS grows by at most pool_keep chunks. Chunks are mmaps: page-aligned.
 * Smaller buffers come from plain malloc. The lock is held only to push or pop a pointer: buffers
 * are allocated and freed in GIL-free code too. */
#define POOL_MAX 256
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static size_t pool_chunk;                /* bytes per recycled chunk; 0: recycling off */
static int pool_keep;                    /* free chunks kept at most */
static int pool_free_n;
static char *pool_free[POOL_MAX];
static unsigned long long pool_mapped, pool_reused;

/* A recycled chunk for `len` bytes (*cap: its size), or NULL with *cap 0 when `len` is not
 * block-sized (or a new chunk cannot be mapped). */
static char *pool_take(size_t len, size_t *cap)
{
    char *p = NULL;
    *cap = 0;
    pthread_mutex_lock(&pool_lock);
    size_t chunk = pool_chunk;
    int pooled = chunk && len > chunk / 2 && len <= chunk;
    if (pooled && pool_free_n > 0) {
        p = pool_free[--pool_free_n];
        pool_reused++;
    } else if (pooled) {
        pool_mapped++;
    }
    pthread_mutex_unlock(&pool_lock);
    if (!pooled)
        return NULL;
    if (p == NULL) {
        p = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
    }
    *cap = chunk;
    return p;
}

/* Memory for a buffer of `len` bytes: a recycled chunk if it is block-sized, else malloc()ed
 * (*cap 0). NULL when out of memory. */
static char *mem_get(size_t len, size_t *cap)
{
    char *p = pool_take(len, cap);
    return p != NULL ? p : malloc(len ? len : 1);    /* malloc(0) may legally return NULL */
}

static void mem_put(char *p, size_t cap)
{
    if (p == NULL)
        return;
    if (cap == 0) {
        free(p);
        return;
    }
    pthread_mutex_lock(&pool_lock);
    if (cap == pool_chunk && pool_free_n < pool_keep) {
        pool_free[pool_free_n++] = p;
        p = NULL;
    }
    pthread_mutex_unlock(&pool_lock);
    if (p != NULL)
        munmap(p, cap);
}

/* ---- the buffer object ------------------------------------------------------------------- */

/* Owns one allocation; the memory is freed (or recycled) when the last export (memoryview) is
 * gone, because every export holds a reference to this object. Buffers read from block files are
 * read-only; those from buffer() are writable (an S3 body is received into them). */
typedef struct {
    PyObject_HEAD
    char *base;                          /* the allocation (what is freed or recycled) */
    char *data;                          /* the bytes exported: base, or past a block file's header */
    Py_ssize_t len;
    size_t cap;                          /* recycled chunk size, 0 for malloc()ed memory */
    size_t alloc;                        /* bytes allocated at base (a chunk: cap) */
    int writable;
} Buffer;

static void buffer_dealloc(Buffer *self)
{
    mem_put(self->base, self->cap);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int buffer_getbuffer(Buffer *self, Py_buffer *view, int flags)
{
    /* read-only buffers: a request for a writable view fails with BufferError. */
    return PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->len, !self->writable, flags);
}

static Py_ssize_t buffer_length(Buffer *self)
{
    return self->len;
}

/* The memory this buffer holds: a recycled chunk's whole size (more than its length when the block
 * is short), so that a keeper charging by size (the memory tier) can tell. */
static PyObject *buffer_capacity(Buffer *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(self->alloc > (size_t)self->len ? self->alloc : (size_t)self->len);
}

static PyGetSetDef buffer_getset[] = {
    {"capacity", (getter)buffer_capacity, NULL, "bytes of memory held (a recycled chunk's size)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyBufferProcs buffer_as_buffer = {(getbufferproc)buffer_getbuffer, NULL};
static PySequenceMethods buffer_as_sequence = {.sq_length = (lenfunc)buffer_length};

static PyTypeObject BufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cachefs._native.Buffer",
    .tp_doc = "Bytes in memory this module owns (export them with memoryview()).",
    .tp_basicsize = sizeof(Buffer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)buffer_dealloc,
    .tp_as_buffer = &buffer_as_buffer,
    .tp_as_sequence = &buffer_as_sequence,
    .tp_getset = buffer_getset,
};

/* A new Buffer that takes ownership of `base` (`alloc` bytes; a chunk: cap) and exports `data`
 * (released on failure). */
static Buffer *new_buffer(char *base, char *data, Py_ssize_t len, size_t cap, size_t alloc, int writable)
{
    Buffer *buf = PyObject_New(Buffer, &BufferType);
    if (buf == NULL) {
        mem_put(base, cap);
        return NULL;
    }
    buf->base = base;
    buf->data = data;
    buf->len = len;
    buf->cap = cap;
    buf->alloc = cap ? cap : alloc;
    buf->writable = writable;
    return buf;
}

/* A read-only memoryview over a new Buffer owning `base` and exporting `data`. */
static PyObject *wrap(char *base, char *data, Py_ssize_t len, size_t cap, size_t alloc)
{
    Buffer *buf = new_buffer(base, data, len, cap, alloc, 0);
    if (buf == NULL)
        return NULL;
    PyObject *view = PyMemoryView_FromObject((PyObject *)buf);
    Py_DECREF(buf);
    return view;
}

/* ---- plain C, called without the GIL ------------------------------------------------------ */

/* preadv until every iovec is full or EOF: a regular file gives short counts at EOF and after a
 * signal, and a caller must never serve half a buffer. Returns the bytes read, or -1 (errno). */
static ssize_t preadv_full(int fd, struct iovec *iov, int iovcnt, off_t off)
{
    ssize_t done = 0;
    while (iovcnt > 0) {
        ssize_t n = preadv(fd, iov, iovcnt, off + done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            break;
        done += n;
        for (; iovcnt > 0 && (size_t)n >= iov->iov_len; iov++, iovcnt--)
            n -= iov->iov_len;
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= n;
        }
    }
    return done;
}

static int open_ro_flags(const char *path, int flags)
{
    int fd;
    do
        fd = open(path, O_RDONLY | O_CLOEXEC | flags);
    while (fd < 0 && errno == EINTR);
    return fd;
}

static int open_ro(const char *path)
{
    return open_ro_flags(path, 0);
}

static uint64_t be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

enum { BLOCK_OK, BLOCK_BAD, BLOCK_ERRNO };

#define ALIGN 4096

/* pread from offset 0 until `len` bytes or EOF; returns the bytes read or -1 (errno). */
static ssize_t pread_full(int fd, char *buf, size_t len)
{
    struct iovec iov = {buf, len};
    return preadv_full(fd, &iov, 1, 0);
}

/* The whole file into a recycled chunk (page-aligned), with O_DIRECT where the filesystem takes it:
 * a block file goes from the disk to the buffer with no page-cache copy (block files are written
 * with O_DIRECT too, so they are rarely in the page cache, and filling it would only evict other
 * things). Returns the bytes read, or -1 (errno). */
static ssize_t read_whole(const char *path, int fd, char *chunk, size_t size)
{
    size_t span = (size + ALIGN - 1) / ALIGN * ALIGN;
    int dfd = open_ro_flags(path, O_DIRECT);
    if (dfd >= 0) {
        ssize_t n = pread_full(dfd, chunk, span);
        int saved = errno;
        close(dfd);
        if (n >= 0 || saved != EINVAL)
            return (errno = saved, n);
    }
    return pread_full(fd, chunk, size);  /* EINVAL: no O_DIRECT here; buffered */
}

/* A file of `size` bytes whose header says `len` payload bytes is whole: exactly header + payload,
 * or that padded with zeros to the next ALIGN (an O_DIRECT write, not truncated: write_block). */
static int whole_size(size_t size, uint64_t len)
{
    if (len > size - HEADER_SIZE)
        return 0;
    size_t exact = (size_t)len + HEADER_SIZE;
    return size == exact || size == (exact + ALIGN - 1) / ALIGN * ALIGN;
}

/* Read a whole block file: header and payload, the payload into a fresh allocation sized from
 * fstat (never from the header, which may be corrupt), or, for a block-sized payload, the whole
 * file into a recycled chunk (read_whole). BLOCK_OK sets *out (the allocation), *data (the
 * payload in it), *outlen, *outcap and *outalloc; BLOCK_BAD means wrong magic, length or
 * checksum; BLOCK_ERRNO leaves errno set. */
static int load_block(const char *path, int verify, char **out, char **data_out, size_t *outlen, size_t *outcap,
                      size_t *outalloc)
{
    unsigned char head[HEADER_SIZE];
    struct stat st;
    char *base = NULL, *data = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = BLOCK_ERRNO;
    int fd = open_ro(path);
    if (fd < 0)
        return BLOCK_ERRNO;
    if (fstat(fd, &st) < 0)
        goto out;
    if (S_ISDIR(st.st_mode)) {          /* as Python's open() does */
        errno = EISDIR;
        goto out;
    }
    if (st.st_size < HEADER_SIZE) {
        rc = BLOCK_BAD;
        goto out;
    }
    size_t size = (size_t)st.st_size, len = size - HEADER_SIZE;
    if ((base = pool_take((size + ALIGN - 1) / ALIGN * ALIGN, &cap)) != NULL) {
        n = read_whole(path, fd, base, size);   /* a recycled chunk: the file as it is on disk */
        if (n < 0)
            goto out;
        memcpy(head, base, HEADER_SIZE);
        data = base + HEADER_SIZE;
    } else {                             /* small: the payload alone, in malloc()ed memory */
        if ((base = malloc(len ? len : 1)) == NULL) {
            errno = ENOMEM;
            goto out;
        }
        data = base;
        struct iovec iov[2] = {{head, HEADER_SIZE}, {data, len}};
        n = preadv_full(fd, iov, 2, 0);
        if (n < 0)
            goto out;
    }
    rc = BLOCK_BAD;                      /* a short read means the file shrank: torn, like disk.py */
    if ((size_t)n != size || memcmp(head, MAGIC, sizeof MAGIC) != 0 || !whole_size(size, be64(head + 8)))
        goto out;
    *outalloc = cap ? cap : len;         /* the payload read, padding included */
    len = (size_t)be64(head + 8);
    if (verify && XXH3_64bits(data, len) != be64(head + 16))
        goto out;
    rc = BLOCK_OK;
    *out = base;
    *data_out = data;
    *outlen = len;
    *outcap = cap;
    base = NULL;
out:;
    int saved = errno;
    mem_put(base, cap);
    close(fd);
    errno = saved;
    return rc;
}

struct range {
    const char *path;
    off_t off;                           /* file offset: payload offset + HEADER_SIZE */
    size_t len;
    char *dst;
};

/* Fill each range's slice of the output. Returns the index of the failing range (errno set; 0
 * errno means a short read), or -1 when all were read. */
static Py_ssize_t load_ranges(struct range *r, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        int fd = open_ro(r[i].path);
        if (fd < 0)
            return i;
        struct iovec iov = {r[i].dst, r[i].len};
        ssize_t got = preadv_full(fd, &iov, 1, r[i].off);
        int saved = errno;
        close(fd);
        if (got < 0 || (size_t)got != r[i].len) {
            errno = got < 0 ? saved : 0;
            return i;
        }
    }
    return -1;
}

/* ---- Python entry points ------------------------------------------------------------------- */

static void set_short_read(PyObject *path)
{
    /* The same exception the Python fallback raises: OSError(EIO, message, path). */
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "isO", EIO, "short read of a cached block", path);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_OSError, exc);
        Py_DECREF(exc);
    }
}

static PyObject *set_errno(int err, PyObject *path)
{
    if (err == ENOMEM)
        return PyErr_NoMemory();
    errno = err;
    return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
}

/* What a load (load_block, load_record) gives Python: the payload as a memoryview, None for a bad
 * block, OSError for errno. */
static PyObject *loaded(int rc, int err, PyObject *path, char *base, char *data, size_t len, size_t cap, size_t alloc)
{
    if (rc == BLOCK_BAD)
        Py_RETURN_NONE;
    if (rc == BLOCK_ERRNO)
        return set_errno(err, path);
    return wrap(base, data, (Py_ssize_t)len, cap, alloc);
}

static PyObject *read_block(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", "verify", NULL};
    PyObject *path, *fspath;
    int verify = 1, rc, err;
    char *base = NULL, *data = NULL;
    size_t len = 0, cap = 0, alloc = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|p:read_block", kwlist, &path, &verify))
        return NULL;
    if (!PyUnicode_FSConverter(path, &fspath))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = load_block(PyBytes_AS_STRING(fspath), verify, &base, &data, &len, &cap, &alloc);
    err = errno;
    Py_END_ALLOW_THREADS
    Py_DECREF(fspath);
    return loaded(rc, err, path, base, data, len, cap, alloc);
}

/* Parse one (path, payload offset, length) tuple into r (r->dst is set later); *fspath gets a new
 * reference that must outlive the GIL-free read. */
static int parse_range(PyObject *item, struct range *r, PyObject **fspath)
{
    PyObject *path;
    long long off;
    Py_ssize_t len;
    if (!PyTuple_Check(item)) {          /* PyArg_ParseTuple would raise SystemError */
        PyErr_SetString(PyExc_TypeError, "read_ranges: each range must be a (path, offset, length) tuple");
        return -1;
    }
    if (!PyArg_ParseTuple(item, "OLn:read_ranges", &path, &off, &len))
        return -1;
    if (off < 0 || len < 0 || off > (long long)INT64_MAX - HEADER_SIZE - len) {
        PyErr_SetString(PyExc_ValueError, "read_ranges: offset and length must be >= 0 and fit a file");
        return -1;
    }
    if (!PyUnicode_FSConverter(path, fspath))
        return -1;
    r->path = PyBytes_AS_STRING(*fspath);
    r->off = (off_t)off + HEADER_SIZE;
    r->len = (size_t)len;
    return 0;
}

static PyObject *read_ranges(PyObject *Py_UNUSED(module), PyObject *arg)
{
    /* A tuple copy: another thread may change a caller's list while the GIL is released, and
     * the error path still needs the original path objects. */
    PyObject *seq = PySequence_Tuple(arg);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq), failed = -1, total = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq), *result = NULL;
    struct range *r = PyMem_Calloc(n ? n : 1, sizeof *r);
    PyObject **paths = PyMem_Calloc(n ? n : 1, sizeof *paths);
    char *data = NULL;
    size_t cap = 0;
    int err = 0;
    if (r == NULL || paths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (parse_range(items[i], &r[i], &paths[i]) < 0)
            goto done;
        if (r[i].len > (size_t)(PY_SSIZE_T_MAX - total)) {
            PyErr_SetString(PyExc_OverflowError, "read_ranges: total length too large");
            goto done;
        }
        total += (Py_ssize_t)r[i].len;
    }
    if ((data = mem_get((size_t)total, &cap)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0, pos = 0; i < n; pos += r[i].len, i++)
        r[i].dst = data + pos;
    Py_BEGIN_ALLOW_THREADS
    failed = load_ranges(r, n);
    err = errno;
    Py_END_ALLOW_THREADS
    if (failed < 0) {
        result = wrap(data, data, total, cap, (size_t)total);
        data = NULL;
    } else if (err == 0) {
        set_short_read(PyTuple_GET_ITEM(items[failed], 0));
    } else {
        set_errno(err, PyTuple_GET_ITEM(items[failed], 0));
    }
done:
    if (data != NULL)
        mem_put(data, cap);
    if (paths != NULL)
        for (Py_ssize_t i = 0; i < n; i++)
            Py_XDECREF(paths[i]);
    PyMem_Free(paths);
    PyMem_Free(r);
    Py_DECREF(seq);
    return result;
}

/* Buffers with headroom from this size on are page-aligned (at most 1/16 of padding). */
#define ALIGNED_MIN (16 * ALIGN)

static PyObject *buffer(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_ssize_t len, headroom = 0;
    size_t cap = 0;
    char *base;
    if (!PyArg_ParseTuple(args, "n|n:buffer", &len, &headroom))
        return NULL;
    if (len < 0 || headroom < 0 || headroom > ALIGN) {
        PyErr_SetString(PyExc_ValueError, "buffer: length must be >= 0 and headroom 0-4096");
        return NULL;
    }
    size_t alloc = (size_t)(len + headroom);
    base = pool_take(alloc, &cap);
    if (base == NULL && headroom > 0 && alloc >= ALIGNED_MIN) {
        /* Page-aligned and padded to ALIGN: header + payload can be written with O_DIRECT from
         * here (write_framed, write_block), small objects too. Not for tiny ones: the padding would
         * be most of their memory, and copying them costs little. */
        alloc = (alloc + ALIGN - 1) / ALIGN * ALIGN;
        void *p = NULL;
        if (posix_memalign(&p, ALIGN, alloc) != 0)
            return PyErr_NoMemory();
        base = p;
    } else if (base == NULL && (base = malloc(alloc ? alloc : 1)) == NULL) {
        return PyErr_NoMemory();
    }
    return (PyObject *)new_buffer(base, base + headroom, len, cap, alloc, 1);
}

/* write(2) (pwrite(2) at `off` when off >= 0) until all of it is written or an error; returns the
 * bytes written, or -1 (errno) when nothing was. Called without the GIL. */
static ssize_t write_full(int fd, off_t off, const char *p, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = off < 0 ? write(fd, p + done, len - done) : pwrite(fd, p + done, len - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return done ? (ssize_t)done : -1;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

/* A block file written from the buffer it was received into: the header goes into the buffer's
 * headroom, right before the payload, and header + payload (padded with zeros to ALIGN, inside the
 * chunk) are written in one write(2) from the chunk's page-aligned start, as O_DIRECT requires.
 * This spares the copy into cache/direct.py's aligned buffer. */
static PyObject *write_framed(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd;
    PyObject *obj;
    Py_buffer header;
    if (!PyArg_ParseTuple(args, "iOy*:write_framed", &fd, &obj, &header))
        return NULL;
    PyObject *result = NULL;
    if (!PyObject_TypeCheck(obj, &BufferType)) {
        PyErr_SetString(PyExc_TypeError, "write_framed: not a cachefs._native.Buffer");
        goto out;
    }
    Buffer *b = (Buffer *)obj;
    size_t hlen = (size_t)header.len, total = hlen + (size_t)b->len;
    size_t padded = (total + ALIGN - 1) / ALIGN * ALIGN;
    /* Only page-aligned memory (a recycled chunk, or buffer() with headroom) whose headroom is
     * exactly the header and that has room for the padding. */
    if ((size_t)(b->data - b->base) != hlen || ((uintptr_t)b->base % ALIGN) != 0 || padded > b->alloc) {
        result = Py_NewRef(Py_None);
        goto out;
    }
    memcpy(b->base, header.buf, hlen);
    memset(b->base + total, 0, padded - total);
    ssize_t n;
    int err;
    Py_BEGIN_ALLOW_THREADS
    n = write_full(fd, -1, b->base, padded);
    err = errno;
    Py_END_ALLOW_THREADS
    if (n < 0) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    result = PyLong_FromSsize_t((size_t)n < total ? n : (ssize_t)total);
out:
    PyBuffer_Release(&header);
    return result;
}

/* writev(2) until all of it is written or an error; as write_full. */
static ssize_t writev_full(int fd, struct iovec *iov, int iovcnt)
{
    ssize_t done = 0;
    while (iovcnt > 0) {
        ssize_t n = writev(fd, iov, iovcnt);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return done ? done : -1;
        if (n == 0)
            break;
        done += n;
        for (; iovcnt > 0 && (size_t)n >= iov->iov_len; iov++, iovcnt--)
            n -= iov->iov_len;
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= n;
        }
    }
    return done;
}

static void put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

/* The Buffer whose whole payload `view` is, with header room and padding for an in-place O_DIRECT
 * write, or NULL. */
static Buffer *framable(PyObject *obj, Py_buffer *view, size_t padded)
{
    PyObject *owner = PyMemoryView_Check(obj) ? PyMemoryView_GET_BUFFER(obj)->obj : obj;
    if (owner == NULL || !PyObject_TypeCheck(owner, &BufferType))
        return NULL;
    Buffer *b = (Buffer *)owner;
    if (view->buf != b->data || view->len != b->len || b->data - b->base != HEADER_SIZE
            || ((uintptr_t)b->base % ALIGN) != 0 || padded > b->alloc)
        return NULL;
    return b;
}

/* Header + payload written with one write at `off` (pwrite; the file position when off < 0), without
 * the GIL. `aligned`: from page-aligned memory, zero-padded to ALIGN (O_DIRECT wants it; a pack
 * record is always padded): the payload's own chunk when `inplace`, else a copy; otherwise header
 * and payload as two iovecs. Returns the bytes written (padding included) or -1 (errno). */
static ssize_t write_record(int fd, off_t off, const unsigned char *head, const char *payload, size_t len,
                            Buffer *inplace, int aligned)
{
    size_t total = len + HEADER_SIZE, padded = (total + ALIGN - 1) / ALIGN * ALIGN;
    if (!aligned) {
        struct iovec iov[2] = {{(void *)head, HEADER_SIZE}, {(void *)payload, len}};
        if (off < 0)
            return writev_full(fd, iov, 2);
        ssize_t n;
        do
            n = pwritev(fd, iov, 2, off);
        while (n < 0 && errno == EINTR);
        return n;                        /* a short count: the caller sees fewer bytes than asked */
    }
    char *src = inplace != NULL ? inplace->base : NULL;
    void *copy = NULL;
    if (src == NULL) {
        if (posix_memalign(&copy, ALIGN, padded) != 0) {
            errno = ENOMEM;
            return -1;
        }
        src = copy;
        memcpy(src + HEADER_SIZE, payload, len);
    }
    memcpy(src, head, HEADER_SIZE);
    memset(src + total, 0, padded - total);
    ssize_t n = write_full(fd, off, src, padded);
    int saved = errno;
    free(copy);
    errno = saved;
    return n;
}

static void make_header(unsigned char *head, const char *magic, const void *payload, size_t len, uint64_t tag)
{
    memcpy(head, magic, 8);
    put_be64(head + 8, len);
    put_be64(head + 16, XXH3_64bits(payload, len));
    put_be64(head + 24, tag);
}

/* (written, in place) as write_block returns it: header + payload bytes, the padding not counted. */
static PyObject *written_result(ssize_t n, size_t total, Buffer *inplace)
{
    return Py_BuildValue("nO", (Py_ssize_t)((size_t)n < total ? (size_t)n : total),
                         inplace != NULL ? Py_True : Py_False);
}

/* Create `path` (O_EXCL) holding the block file of `data`, with the GIL released throughout: the
 * payload's xxh3, the header, one write, close. With O_DIRECT the write is padded with zeros to
 * ALIGN and the file keeps that length (readers accept it: whole_size), sparing an ftruncate; the
 * header goes into the buffer's headroom when `data` is a buffer() with room, else header and
 * payload are copied into an aligned allocation. On any failure the file is removed. Returns the
 * (header + payload bytes written, whether it was written in place); fewer bytes: a short write
 * (a full disk), and the file is removed. */
static PyObject *write_block(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *path, *fspath, *obj;
    int direct;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OOp:write_block", &path, &obj, &direct))
        return NULL;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (!PyUnicode_FSConverter(path, &fspath)) {
        PyBuffer_Release(&view);
        return NULL;
    }
    size_t len = (size_t)view.len, total = len + HEADER_SIZE;
    size_t padded = (total + ALIGN - 1) / ALIGN * ALIGN;
    Buffer *inplace = direct ? framable(obj, &view, padded) : NULL;
    const char *cpath = PyBytes_AS_STRING(fspath);
    unsigned char head[HEADER_SIZE];
    ssize_t n = -1;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    make_header(head, MAGIC, view.buf, len, 0);
    int fd;
    do
        fd = open(cpath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | (direct ? O_DIRECT : 0), 0600);
    while (fd < 0 && errno == EINTR);
    if (fd >= 0) {
        n = write_record(fd, -1, head, view.buf, len, inplace, direct);
        err = n < 0 ? errno : 0;
        close(fd);
        if (n < 0 || (size_t)n < total)
            unlink(cpath);
    } else {
        err = errno;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *result = n < 0 ? set_errno(err, path) : written_result(n, total, inplace);
    Py_DECREF(fspath);
    return result;
}

/* ---- pack files (cachefs/cache/packs.py) ---------------------------------------------------- */

/* A pack record's header (the same 32 bytes as a block file's, other fields): magic "CFP1", u32
 * payload length, u64 xxh3-64 of the payload, the 16-byte block key: a pack can be read back
 * without its index (cache/packs.py). */
static const char PACK_MAGIC[4] = {'C', 'F', 'P', '1'};
#define KEY_SIZE 16

static void put_be32(unsigned char *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int parse_key(Py_buffer *key)
{
    if (key->len == KEY_SIZE)
        return 1;
    PyErr_SetString(PyExc_ValueError, "the block key must be 16 bytes");
    PyBuffer_Release(key);
    return 0;
}

/* Records appended to an open pack file from `offset` (ALIGN-aligned) on, back to back: each its
 * header, payload and zeros to ALIGN in aligned memory (the payload's own chunk when it has header
 * room, else a copy), all in one pwritev with the GIL released, so a batch of the disk writer's
 * costs one syscall and one trip to the device instead of one each (cache/packs.py). items: a
 * sequence of (data, 16-byte key). Returns (bytes written, padding included; how many records were
 * written from their own chunk). */
#define BATCH_MAX 256
static PyObject *append_blocks(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd, direct;
    long long offset;
    PyObject *items;
    if (!PyArg_ParseTuple(args, "iLOp:append_blocks", &fd, &offset, &items, &direct))
        return NULL;
    if (offset < 0 || offset % ALIGN != 0) {
        PyErr_SetString(PyExc_ValueError, "append_blocks: offset must be a multiple of 4096");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(items, "append_blocks: items must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > BATCH_MAX) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "append_blocks: at most 256 records at once");
        return NULL;
    }
    Py_buffer views[BATCH_MAX];
    struct iovec iov[BATCH_MAX];
    void *copies[BATCH_MAX];
    Py_ssize_t got = 0, in_place = 0;
    size_t total = 0;
    PyObject *result = NULL;
    for (; got < n; got++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, got), *obj;
        Py_buffer key;
        copies[got] = NULL;
        if (!PyArg_ParseTuple(item, "Oy*:append_blocks item", &obj, &key))
            goto out;
        if (!parse_key(&key))
            goto out;
        if (PyObject_GetBuffer(obj, &views[got], PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&key);
            goto out;
        }
        size_t len = (size_t)views[got].len, padded = (len + HEADER_SIZE + ALIGN - 1) / ALIGN * ALIGN;
        if (len > UINT32_MAX) {
            PyBuffer_Release(&key);
            PyBuffer_Release(&views[got]);
            PyErr_SetString(PyExc_ValueError, "append_blocks: a packed block is smaller than 4 GiB");
            goto out;
        }
        Buffer *inplace = direct ? framable(obj, &views[got], padded) : NULL;
        for (Py_ssize_t j = 0; inplace != NULL && j < got; j++)
            if (iov[j].iov_base == inplace->base)
                inplace = NULL;              /* the same buffer twice: one header room, so copy */
        char *dst = inplace != NULL ? inplace->base : NULL;
        if (dst == NULL) {
            if (posix_memalign(&copies[got], ALIGN, padded) != 0) {
                PyBuffer_Release(&key);
                PyBuffer_Release(&views[got]);
                PyErr_NoMemory();
                goto out;
            }
            dst = copies[got];
            memcpy(dst + HEADER_SIZE, views[got].buf, len);
        } else {
            in_place++;
        }
        unsigned char *head = (unsigned char *)dst;
        memcpy(head, PACK_MAGIC, sizeof PACK_MAGIC);
        put_be32(head + 4, (uint32_t)len);
        memcpy(head + 16, key.buf, KEY_SIZE);
        PyBuffer_Release(&key);
        memset(dst + HEADER_SIZE + len, 0, padded - HEADER_SIZE - len);
        iov[got].iov_base = dst;
        iov[got].iov_len = padded;
        total += padded;
    }
    ssize_t written = 0;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)     /* the checksums, without the GIL */
        put_be64((unsigned char *)iov[i].iov_base + 8, XXH3_64bits((char *)iov[i].iov_base + HEADER_SIZE,
                                                                   (size_t)views[i].len));
    struct iovec *v = iov;
    int left = (int)n;
    while (left > 0) {
        ssize_t w = pwritev(fd, v, left, (off_t)offset + written);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            err = w < 0 ? errno : 0;
            break;
        }
        written += w;
        for (; left > 0 && (size_t)w >= v->iov_len; v++, left--)
            w -= (ssize_t)v->iov_len;
        if (left > 0) {                    /* a short write: go on from where it stopped */
            v->iov_base = (char *)v->iov_base + w;
            v->iov_len -= (size_t)w;
        }
    }
    Py_END_ALLOW_THREADS
    if (written == 0 && err != 0) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
    } else {
        result = Py_BuildValue("nn", (Py_ssize_t)written, in_place);
    }
out:
    for (Py_ssize_t i = 0; i < got; i++) {
        free(copies[i]);
        PyBuffer_Release(&views[i]);
    }
    Py_DECREF(seq);
    return result;
}

/* A pack record's payload into memory of its own (a recycled chunk when block-sized): BLOCK_BAD
 * unless the whole record is there with the magic, length, key and (verify) checksum asked for. */
static int load_record(const char *path, off_t off, size_t len, const char *key, int verify, char **out,
                       size_t *outcap)
{
    unsigned char head[HEADER_SIZE];
    size_t cap = 0;
    char *base = mem_get(len, &cap);
    if (base == NULL) {
        errno = ENOMEM;
        return BLOCK_ERRNO;
    }
    int rc = BLOCK_ERRNO, fd = open_ro(path);
    ssize_t n = -1;
    if (fd >= 0) {
        struct iovec iov[2] = {{head, HEADER_SIZE}, {base, len}};
        n = preadv_full(fd, iov, 2, off);
        int saved = errno;
        close(fd);
        errno = saved;
    }
    if (n >= 0) {
        rc = BLOCK_BAD;
        if ((size_t)n == len + HEADER_SIZE && memcmp(head, PACK_MAGIC, sizeof PACK_MAGIC) == 0
                && be32(head + 4) == len && memcmp(head + 16, key, KEY_SIZE) == 0
                && (!verify || XXH3_64bits(base, len) == be64(head + 8))) {
            *out = base;
            *outcap = cap;
            return BLOCK_OK;
        }
    }
    int saved = errno;
    mem_put(base, cap);
    errno = saved;
    return rc;
}

static PyObject *read_packed(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", "offset", "length", "key", "verify", NULL};
    PyObject *path, *fspath;
    long long offset;
    Py_ssize_t length;
    Py_buffer key;
    char ckey[KEY_SIZE];
    int verify = 1, rc, err;
    char *base = NULL;
    size_t cap = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OLny*|p:read_packed", kwlist, &path, &offset, &length, &key,
                                     &verify))
        return NULL;
    if (!parse_key(&key))
        return NULL;
    memcpy(ckey, key.buf, KEY_SIZE);
    PyBuffer_Release(&key);
    if (offset < 0 || length < 0) {
        PyErr_SetString(PyExc_ValueError, "read_packed: offset and length must be >= 0");
        return NULL;
    }
    if (!PyUnicode_FSConverter(path, &fspath))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = load_record(PyBytes_AS_STRING(fspath), (off_t)offset, (size_t)length, ckey, verify, &base, &cap);
    err = errno;
    Py_END_ALLOW_THREADS
    Py_DECREF(fspath);
    return loaded(rc, err, path, base, base, (size_t)length, cap, (size_t)length);
}

/* Give a removed record's space back to the filesystem (a hole; the file keeps its size). */
static PyObject *punch_hole(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *path, *fspath;
    long long offset, length;
    if (!PyArg_ParseTuple(args, "OLL:punch_hole", &path, &offset, &length))
        return NULL;
    if (!PyUnicode_FSConverter(path, &fspath))
        return NULL;
    int rc = -1, err;
    Py_BEGIN_ALLOW_THREADS
    int fd;
    do
        fd = open(PyBytes_AS_STRING(fspath), O_WRONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd >= 0) {
        rc = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
        int saved = errno;
        close(fd);
        errno = saved;
    }
    err = errno;
    Py_END_ALLOW_THREADS
    Py_DECREF(fspath);
    if (rc < 0)
        return set_errno(err, path);
    Py_RETURN_NONE;
}

static PyObject *set_pool(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_ssize_t chunk;
    int keep;
    char *drop[POOL_MAX];
    int ndrop = 0;
    size_t old;
    if (!PyArg_ParseTuple(args, "ni:set_pool", &chunk, &keep))
        return NULL;
    if (chunk < 0 || keep < 0 || keep > POOL_MAX) {
        PyErr_Format(PyExc_ValueError, "set_pool: chunk must be >= 0 and keep in 0..%d", POOL_MAX);
        return NULL;
    }
    pthread_mutex_lock(&pool_lock);
    old = pool_chunk;
    while (pool_free_n > (old == (size_t)chunk ? keep : 0))
        drop[ndrop++] = pool_free[--pool_free_n];
    pool_chunk = (size_t)chunk;
    pool_keep = keep;
    pthread_mutex_unlock(&pool_lock);
    for (int i = 0; i < ndrop; i++)
        munmap(drop[i], old);
    Py_RETURN_NONE;
}

/* Map and touch free chunks up to `keep` now (MAP_POPULATE), so that the first blocks read after
 * the mount do not pay a page fault per 4 KiB either. */
static PyObject *fill_pool(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    for (;;) {
        pthread_mutex_lock(&pool_lock);
        size_t chunk = pool_chunk;
        int room = chunk && pool_free_n < pool_keep;
        pthread_mutex_unlock(&pool_lock);
        if (!room)
            break;
        char *p;
        Py_BEGIN_ALLOW_THREADS
        p = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        Py_END_ALLOW_THREADS
        if (p == MAP_FAILED)
            return PyErr_SetFromErrno(PyExc_OSError);
        pthread_mutex_lock(&pool_lock);
        pool_mapped++;
        pthread_mutex_unlock(&pool_lock);
        mem_put(p, chunk);               /* unmapped at once if the pool changed meanwhile */
    }
    Py_RETURN_NONE;
}

static PyObject *pool_stats(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    pthread_mutex_lock(&pool_lock);
    PyObject *r = Py_BuildValue("{s:n,s:i,s:i,s:K,s:K}", "chunk", (Py_ssize_t)pool_chunk, "keep", pool_keep,
                                "free", pool_free_n, "mapped", pool_mapped, "reused", pool_reused);
    pthread_mutex_unlock(&pool_lock);
    return r;
}

static PyMethodDef methods[] = {
    {"buffer", buffer, METH_VARARGS,
     "buffer(n, headroom=0) -> Buffer\n\n"
     "A writable buffer of n bytes (contents undefined), in recycled memory if n + headroom fits a\n"
     "pool chunk, with `headroom` bytes of the allocation before it (room for a block file header)."},
    {"write_framed", write_framed, METH_VARARGS,
     "write_framed(fd, buffer, header) -> int | None\n\n"
     "Write header + the buffer's bytes to fd in one aligned write from the buffer's own chunk (the\n"
     "header put in its headroom, zero padding to 4096 after it); the bytes of header + payload\n"
     "written. None, writing nothing, when the buffer is not a recycled chunk with exactly\n"
     "len(header) bytes of headroom. OSError on a write error."},
    {"write_block", write_block, METH_VARARGS,
     "write_block(path, data, direct) -> (int, bool)\n\n"
     "Create path (O_EXCL) holding data's block file (header with xxh3, payload) in one write, with\n"
     "the GIL released; direct: O_DIRECT, zero-padded to 4096 (the file keeps that length). Returns\n"
     "(header + payload bytes written, written from the buffer's own headroom); on a short write\n"
     "or an error the file is removed."},
    {"append_blocks", append_blocks, METH_VARARGS,
     "append_blocks(fd, offset, [(data, key), ...], direct) -> (int, int)\n\n"
     "Pack records (magic CFP1, u32 length, xxh3, 16-byte key; payload; zeros to 4096) written back\n"
     "to back from offset of an open pack file in one pwritev, the GIL released.\n"
     "Returns (bytes written, padding included; how many went from their own buffer)."},
    {"read_packed", (PyCFunction)(void (*)(void))read_packed, METH_VARARGS | METH_KEYWORDS,
     "read_packed(path, offset, length, key, verify=True) -> memoryview | None\n\n"
     "The payload of the pack record at offset, or None unless magic, length, key and (with verify)\n"
     "xxh3 are the ones asked for."},
    {"punch_hole", punch_hole, METH_VARARGS,
     "punch_hole(path, offset, length) -> None\n\nDeallocate that range of the file (its size kept)."},
    {"set_pool", set_pool, METH_VARARGS,
     "set_pool(chunk, keep) -> None\n\n"
     "Recycle allocations of more than chunk/2 and at most chunk bytes; keep at most `keep` free."},
    {"fill_pool", fill_pool, METH_NOARGS,
     "fill_pool() -> None\n\nMap and touch free chunks until `keep` are free."},
    {"pool_stats", pool_stats, METH_NOARGS,
     "pool_stats() -> dict: chunk, keep, free, mapped (chunks ever mapped), reused (chunks reused)"},
    {"read_block", (PyCFunction)(void (*)(void))read_block, METH_VARARGS | METH_KEYWORDS,
     "read_block(path, verify=True) -> memoryview | None\n\n"
     "The payload of a block file, or None if its magic, length or (with verify) xxh3 is wrong."},
    {"read_ranges", read_ranges, METH_O,
     "read_ranges([(path, payload_offset, length), ...]) -> memoryview\n\n"
     "Those payload bytes of already verified block files, concatenated in one buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cachefs._native",
    .m_doc = "Zero-copy block file reads (see cachefs/native.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&BufferType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddObjectRef(m, "Buffer", (PyObject *)&BufferType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
