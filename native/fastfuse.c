/* cachefs._fastfuse: the FUSE requests of a file whose bytes are in memory, answered in C.
 *
 * Why: on a cold epoch of small files every file costs four FUSE requests (LOOKUP, OPEN, READ,
 * RELEASE), and through pyfuse3 each one is a trio wake-up, a coroutine and the daemon's Python
 * handler: ~0.25 ms of the trio thread's CPU per file (docs/BENCHMARKS.md, issue 18). Once the
 * order prefetch has a file's one block in memory, nothing in those answers needs Python: its
 * attributes are known, and its bytes sit in a buffer.
 *
 * How, without a FUSE loop of our own: this module defines libfuse's fuse_session_new and
 * fuse_session_process_buf (symbol version FUSE_3.0, native/fastfuse.map). cachefs.fastpath loads
 * it with RTLD_GLOBAL before pyfuse3 is imported, so pyfuse3's calls bind here:
 * - fuse_session_new keeps pyfuse3's handler table and hands libfuse a copy whose lookup, getattr,
 *   open, read and release are this module's. Each answers from its tables when it can and calls
 *   pyfuse3's own handler otherwise (one branch when the fast path is off).
 * - fuse_session_process_buf runs libfuse's, then, while the request just processed was answered
 *   here, takes the next waiting request from /dev/fuse (poll with no wait first) and processes it
 *   too: a run of fast requests costs pyfuse3's loop nothing. It stops at the first request that
 *   went to Python, whose coroutine pyfuse3 then awaits as usual (pyfuse3 keeps one per call).
 *
 * Threads: pyfuse3 calls process_buf from the trio thread with the GIL held, so the handlers run
 * under the GIL; every function of the Python API runs under it too and none releases it. The GIL
 * is thus the one lock over the tables.
 *
 * What Python tells it (cachefs/fastpath.py): add() a file (its parent and name, its attributes,
 * until when its name may be answered, its bytes as any buffer-protocol object, held, not copied),
 * forget() an inode or a name on any change, clear(). What it tells Python: the inodes it opened
 * (events(), an eventfd wakes the reader of them: the order's window moves on) and its counters.
 * A file's bytes are let go at the release of its first open (read once: later opens go to Python,
 * which finds the block in the cache tiers) and at most `limit` bytes are held at once.
 */
#define _GNU_SOURCE        /* dlvsym */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define FAST_FH (1ULL << 63)       /* handles of this module; pyfuse3's count up from 1 */
#define DRAIN_MAX 256              /* requests processed per call of process_buf at most */

typedef struct fuse_session *(*session_new_fn)(struct fuse_args *, const struct fuse_lowlevel_ops *, size_t, void *);
typedef void (*process_buf_fn)(struct fuse_session *, const struct fuse_buf *);

static session_new_fn real_session_new;
static process_buf_fn real_process_buf;
static struct fuse_lowlevel_ops orig;     /* pyfuse3's handlers */
static struct fuse_session *session;      /* the one pyfuse3 made through us */
static int enabled;
static int served;                        /* the request just processed was answered here */

/* ---- the bytes of a file, shared by its entry and its open handles ---------------------------- */

typedef struct {
    Py_buffer view;
    long refs;
} Blob;

static unsigned long long held_bytes, limit_bytes = 256ULL << 20;

static void blob_drop(Blob *b) {
    if (b != NULL && --b->refs == 0) {
        held_bytes -= (unsigned long long)b->view.len;
        PyBuffer_Release(&b->view);
        free(b);
    }
}

/* ---- entries: by inode, and by (parent, name) ------------------------------------------------- */

typedef struct Entry {
    uint64_t ino, parent;
    char *name;
    size_t namelen;
    struct stat st;
    uint64_t generation;
    double entry_timeout, attr_timeout, valid_until;   /* valid_until: CLOCK_REALTIME seconds */
    Blob *data;
    int opened;
    struct Entry *next_ino, *next_name;
    struct Entry *older, *newer;     /* the entries holding bytes, oldest first (while data) */
} Entry;

static Entry *oldest_held, *newest_held;

/* The bytes of an entry let go (read once, forgotten, or making room for newer ones). */
static void drop_data(Entry *e) {
    if (e->data == NULL)
        return;
    if (e->older) e->older->newer = e->newer; else oldest_held = e->newer;
    if (e->newer) e->newer->older = e->older; else newest_held = e->older;
    e->older = e->newer = NULL;
    blob_drop(e->data);
    e->data = NULL;
}

static void hold_data(Entry *e, Blob *b) {
    e->data = b;
    e->older = newest_held;
    e->newer = NULL;
    if (newest_held) newest_held->newer = e; else oldest_held = e;
    newest_held = e;
}

static Entry **by_ino, **by_name;
static size_t nbuckets, nentries, max_entries = 1 << 20;

static uint64_t mix(uint64_t h) {
    h ^= h >> 33; h *= 0xff51afd7ed558ccdULL; h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL; h ^= h >> 33;
    return h;
}

static uint64_t name_hash(uint64_t parent, const char *name, size_t len) {
    uint64_t h = mix(parent + 0x9e3779b97f4a7c15ULL);
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 0x100000001b3ULL;
    return mix(h);
}

static Entry *find_ino(uint64_t ino) {
    if (!nbuckets)
        return NULL;
    for (Entry *e = by_ino[mix(ino) & (nbuckets - 1)]; e; e = e->next_ino)
        if (e->ino == ino)
            return e;
    return NULL;
}

static Entry *find_name(uint64_t parent, const char *name, size_t len) {
    if (!nbuckets)
        return NULL;
    for (Entry *e = by_name[name_hash(parent, name, len) & (nbuckets - 1)]; e; e = e->next_name)
        if (e->parent == parent && e->namelen == len && memcmp(e->name, name, len) == 0)
            return e;
    return NULL;
}

static void unlink_entry(Entry *e) {
    Entry **p = &by_ino[mix(e->ino) & (nbuckets - 1)];
    while (*p != e)
        p = &(*p)->next_ino;
    *p = e->next_ino;
    p = &by_name[name_hash(e->parent, e->name, e->namelen) & (nbuckets - 1)];
    while (*p != e)
        p = &(*p)->next_name;
    *p = e->next_name;
    nentries--;
    drop_data(e);
    free(e->name);
    free(e);
}

static void link_entry(Entry *e) {
    size_t i = mix(e->ino) & (nbuckets - 1), j = name_hash(e->parent, e->name, e->namelen) & (nbuckets - 1);
    e->next_ino = by_ino[i];
    by_ino[i] = e;
    e->next_name = by_name[j];
    by_name[j] = e;
    nentries++;
}

static int grow(void) {
    size_t n = nbuckets ? nbuckets * 2 : 1024;
    Entry **a = calloc(n, sizeof *a), **b = calloc(n, sizeof *b);
    if (!a || !b) {
        free(a);
        free(b);
        return -1;
    }
    Entry **old = by_ino;
    size_t oldn = nbuckets;
    free(by_name);
    by_ino = a;
    by_name = b;
    nbuckets = n;
    nentries = 0;
    for (size_t i = 0; i < oldn; i++)
        for (Entry *e = old[i], *next; e; e = next) {
            next = e->next_ino;
            link_entry(e);
        }
    free(old);
    return 0;
}

/* ---- open handles ------------------------------------------------------------------------------ */

typedef struct {
    Blob *data;           /* NULL: a free slot (next_free links them) */
    uint64_t ino;
    long next_free;
    int stale;            /* another size of the object was opened since: reads get ESTALE */
} Handle;

static Handle *handles;
static long nhandles, free_handle = -1, open_handles;

static long handle_new(Blob *b, uint64_t ino) {
    if (free_handle < 0) {
        long n = nhandles ? nhandles * 2 : 256;
        Handle *h = realloc(handles, (size_t)n * sizeof *h);
        if (!h)
            return -1;
        handles = h;
        for (long i = n - 1; i >= nhandles; i--) {
            handles[i].data = NULL;
            handles[i].next_free = free_handle;
            free_handle = i;
        }
        nhandles = n;
    }
    long i = free_handle;
    free_handle = handles[i].next_free;
    handles[i].data = b;
    handles[i].ino = ino;
    handles[i].stale = 0;
    b->refs++;
    open_handles++;
    return i;
}

static void handle_free(Handle *h) {
    open_handles--;
    blob_drop(h->data);
    h->data = NULL;
    h->next_free = free_handle;
    free_handle = h - handles;
}

static Handle *handle_of(uint64_t fh) {
    if (!(fh & FAST_FH))
        return NULL;
    long i = (long)(fh & ~FAST_FH);
    return i < nhandles && handles[i].data ? &handles[i] : NULL;
}

/* ---- what Python reads back -------------------------------------------------------------------- */

static uint64_t *opened_inos;
static size_t nopened, opened_cap;
static int event_fd = -1;

enum { C_LOOKUP, C_GETATTR, C_OPEN, C_READ, C_READ_BYTES, C_RELEASE, C_DRAINED, C_NO_ROOM, C_UNREAD, C_COUNTERS };
static const char *counter_names[C_COUNTERS] = {
    "fast_lookups", "fast_getattrs", "fast_opens", "fast_reads", "fast_read_bytes", "fast_releases",
    "fast_drained", "fast_no_room", "fast_dropped_unread",
};
static unsigned long long counters[C_COUNTERS];

static void note_opened(uint64_t ino) {
    if (nopened == opened_cap) {
        size_t n = opened_cap ? opened_cap * 2 : 1024;
        uint64_t *a = realloc(opened_inos, n * sizeof *a);
        if (!a)
            return;            /* the order's window then moves at the next open Python sees */
        opened_inos = a;
        opened_cap = n;
    }
    opened_inos[nopened++] = ino;
    if (nopened == 1 && event_fd >= 0) {
        uint64_t one = 1;
        if (write(event_fd, &one, sizeof one) < 0) { /* counter full: a wake-up is pending anyway */ }
    }
}

static double now_realtime(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- the handlers ------------------------------------------------------------------------------ */

static void fast_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    Entry *e = enabled ? find_name(parent, name, strlen(name)) : NULL;
    if (e == NULL || e->valid_until <= now_realtime()) {
        orig.lookup(req, parent, name);
        return;
    }
    struct fuse_entry_param p;
    memset(&p, 0, sizeof p);
    p.ino = e->ino;
    p.generation = e->generation;
    p.attr = e->st;
    p.attr_timeout = e->attr_timeout;
    p.entry_timeout = e->entry_timeout;
    counters[C_LOOKUP]++;
    served = 1;
    fuse_reply_entry(req, &p);
}

static void fast_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    Entry *e = enabled ? find_ino(ino) : NULL;
    if (e == NULL) {
        orig.getattr(req, ino, fi);
        return;
    }
    counters[C_GETATTR]++;
    served = 1;
    fuse_reply_attr(req, &e->st, e->attr_timeout);
}

static void fast_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    Entry *e = enabled ? find_ino(ino) : NULL;
    long h = -1;
    if (e != NULL && e->data != NULL && (fi->flags & (O_ACCMODE | O_TRUNC | O_APPEND)) == O_RDONLY)
        h = handle_new(e->data, e->ino);
    if (h < 0) {
        orig.open(req, ino, fi);
        return;
    }
    fi->fh = FAST_FH | (uint64_t)h;
    fi->keep_cache = e->opened ? 1 : 0;   /* the pages of this very version, read through us */
    fi->direct_io = 0;
    e->opened = 1;
    counters[C_OPEN]++;
    served = 1;
    note_opened(e->ino);
    if (fuse_reply_open(req, fi) == -ENOENT)
        handle_free(&handles[h]);   /* the open was interrupted: no RELEASE will come (libfuse's fuse.c) */
}

static void fast_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    Handle *h = handle_of(fi->fh);
    if (h == NULL) {
        orig.read(req, ino, size, off, fi);
        return;
    }
    if (h->stale) {
        served = 1;
        fuse_reply_err(req, ESTALE);
        return;
    }
    Py_ssize_t len = h->data->view.len;
    size_t n = off >= len ? 0 : (size_t)(len - off) < size ? (size_t)(len - off) : size;
    counters[C_READ]++;
    counters[C_READ_BYTES] += n;
    served = 1;
    fuse_reply_buf(req, n ? (const char *)h->data->view.buf + off : NULL, n);
}

static void fast_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    Handle *h = handle_of(fi->fh);
    if (h == NULL) {
        orig.release(req, ino, fi);
        return;
    }
    Entry *e = find_ino(h->ino);
    if (e != NULL && e->data == h->data)       /* read once: later opens go to Python's cache */
        drop_data(e);
    handle_free(h);
    counters[C_RELEASE]++;
    served = 1;
    fuse_reply_err(req, 0);
}

/* ---- the two libfuse functions pyfuse3 calls through us ----------------------------------------- */

static int find_real(void) {
    if (real_session_new && real_process_buf)
        return 0;
    void *lib = dlopen("libfuse3.so.3", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL)
        return -1;
    real_session_new = (session_new_fn)dlvsym(lib, "fuse_session_new", "FUSE_3.0");
    real_process_buf = (process_buf_fn)dlvsym(lib, "fuse_session_process_buf", "FUSE_3.0");
    return real_session_new && real_process_buf ? 0 : -1;
}

__attribute__((visibility("default")))
struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op, size_t op_size,
                                      void *userdata) {
    if (find_real() != 0)
        return NULL;
    if (session != NULL || op_size != sizeof orig || !op->lookup || !op->getattr || !op->open || !op->read
        || !op->release)
        return real_session_new(args, op, op_size, userdata);     /* not pyfuse3's one session */
    struct fuse_lowlevel_ops ours;
    memcpy(&orig, op, sizeof orig);
    memcpy(&ours, op, sizeof ours);
    ours.lookup = fast_lookup;
    ours.getattr = fast_getattr;
    ours.open = fast_open;
    ours.read = fast_read;
    ours.release = fast_release;
    session = real_session_new(args, &ours, sizeof ours, userdata);
    return session;
}

__attribute__((visibility("default")))
void fuse_session_process_buf(struct fuse_session *se, const struct fuse_buf *buf) {
    if (find_real() != 0)
        return;
    served = 0;
    real_process_buf(se, buf);
    if (se != session || !served || !enabled)
        return;
    static struct fuse_buf more;      /* libfuse allocates its memory at the first receive */
    struct pollfd p = {.fd = fuse_session_fd(se), .events = POLLIN};
    for (int n = 0; served && n < DRAIN_MAX; n++) {
        if (poll(&p, 1, 0) != 1 || !(p.revents & POLLIN))
            break;
        if (fuse_session_receive_buf(se, &more) <= 0)
            break;       /* interrupted, or unmounted: pyfuse3's loop sees the session's exit flag */
        served = 0;
        counters[C_DRAINED]++;
        real_process_buf(se, &more);
    }
}

/* ---- the Python API ----------------------------------------------------------------------------- */

static PyObject *py_active(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    return PyBool_FromLong(session != NULL);
}

static PyObject *py_enable(PyObject *self, PyObject *args) {
    (void)self;
    int on;
    unsigned long long limit, entries;
    if (!PyArg_ParseTuple(args, "pKK", &on, &limit, &entries))
        return NULL;
    if (on && event_fd < 0) {
        event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (event_fd < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    enabled = on && session != NULL;
    limit_bytes = limit;
    max_entries = (size_t)entries;
    return PyBool_FromLong(enabled);
}

static PyObject *py_add(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long ino, parent, generation, size, atime, mtime, ctime;
    const char *name;
    Py_ssize_t namelen;
    unsigned int mode, nlink, uid, gid;
    double entry_timeout, attr_timeout, valid_until;
    PyObject *data;
    if (!PyArg_ParseTuple(args, "KKy#KIIIIKKKKdddO", &ino, &parent, &name, &namelen, &generation, &mode, &nlink,
                          &uid, &gid, &size, &atime, &mtime, &ctime, &entry_timeout, &attr_timeout, &valid_until,
                          &data))
        return NULL;
    if (nentries >= nbuckets && grow() != 0)
        return PyErr_NoMemory();
    Entry *old = find_ino(ino);
    if (old != NULL)
        unlink_entry(old);
    if ((old = find_name(parent, name, (size_t)namelen)) != NULL)
        unlink_entry(old);
    if (nentries >= max_entries) {
        counters[C_NO_ROOM]++;
        Py_RETURN_FALSE;
    }
    Entry *e = calloc(1, sizeof *e);
    if (e == NULL || (e->name = malloc((size_t)namelen + 1)) == NULL) {
        free(e);
        return PyErr_NoMemory();
    }
    memcpy(e->name, name, (size_t)namelen);
    e->name[namelen] = 0;
    e->namelen = (size_t)namelen;
    e->ino = ino;
    e->parent = parent;
    e->generation = generation;
    e->st.st_ino = ino;
    e->st.st_mode = mode;
    e->st.st_nlink = nlink;
    e->st.st_uid = uid;
    e->st.st_gid = gid;
    e->st.st_size = (off_t)size;
    e->st.st_blocks = (blkcnt_t)((size + 511) / 512);
    e->st.st_blksize = 128 * 1024;
    e->st.st_atim.tv_sec = (time_t)(atime / 1000000000ULL);
    e->st.st_atim.tv_nsec = (long)(atime % 1000000000ULL);
    e->st.st_mtim.tv_sec = (time_t)(mtime / 1000000000ULL);
    e->st.st_mtim.tv_nsec = (long)(mtime % 1000000000ULL);
    e->st.st_ctim.tv_sec = (time_t)(ctime / 1000000000ULL);
    e->st.st_ctim.tv_nsec = (long)(ctime % 1000000000ULL);
    e->entry_timeout = entry_timeout;
    e->attr_timeout = attr_timeout;
    e->valid_until = valid_until;
    int kept = 0;
    if (data != Py_None) {
        Blob *b = calloc(1, sizeof *b);
        if (b == NULL) {
            free(e->name);
            free(e);
            return PyErr_NoMemory();
        }
        if (PyObject_GetBuffer(data, &b->view, PyBUF_SIMPLE) != 0) {
            free(b);
            free(e->name);
            free(e);
            return NULL;
        }
        /* Room is made by letting the oldest bytes go: files fetched long ago and not read
         * through here (read by Python first, or never asked for) must not keep the newest out. */
        while ((unsigned long long)b->view.len == size && size <= limit_bytes && held_bytes + size > limit_bytes
               && oldest_held != NULL) {
            counters[C_UNREAD]++;
            drop_data(oldest_held);
        }
        if ((unsigned long long)b->view.len != size || held_bytes + size > limit_bytes) {
            counters[C_NO_ROOM] += (unsigned long long)b->view.len == size;
            PyBuffer_Release(&b->view);
            free(b);
        } else {
            b->refs = 1;
            held_bytes += size;
            hold_data(e, b);
            kept = 1;
        }
    }
    link_entry(e);
    return PyBool_FromLong(kept);
}

/* args: one inode number; *e: its entry or NULL. -1 with an exception set when args are not that. */
static int entry_arg(PyObject *args, Entry **e) {
    unsigned long long ino;
    if (!PyArg_ParseTuple(args, "K", &ino))
        return -1;
    *e = find_ino(ino);
    return 0;
}

static PyObject *py_forget(PyObject *self, PyObject *args) {
    (void)self;
    Entry *e;
    if (entry_arg(args, &e) != 0)
        return NULL;
    if (e != NULL)
        unlink_entry(e);
    Py_RETURN_NONE;
}

static PyObject *py_drop_data(PyObject *self, PyObject *args) {
    (void)self;
    Entry *e;
    if (entry_arg(args, &e) != 0)
        return NULL;
    if (e != NULL)
        drop_data(e);
    Py_RETURN_NONE;
}

/* The kernel holds one size per inode and cuts reads there: while handles of two sizes of one file
 * are open, the older ones are made stale (cachefs/namespace/handles.py says the same of Python's). */
static PyObject *py_open_size(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long ino;
    if (!PyArg_ParseTuple(args, "K", &ino))
        return NULL;
    for (long i = 0; open_handles && i < nhandles; i++)      /* none open, most often: no scan */
        if (handles[i].data && handles[i].ino == ino && !handles[i].stale)
            return PyLong_FromSsize_t(handles[i].data->view.len);
    Py_RETURN_NONE;
}

static PyObject *py_stale_other_sizes(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long ino;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "Kn", &ino, &size))
        return NULL;
    long n = 0;
    for (long i = 0; open_handles && i < nhandles; i++)
        if (handles[i].data && handles[i].ino == ino && handles[i].data->view.len != size && !handles[i].stale) {
            handles[i].stale = 1;
            n++;
        }
    return PyLong_FromLong(n);
}

static PyObject *py_forget_name(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long parent;
    const char *name;
    Py_ssize_t namelen;
    if (!PyArg_ParseTuple(args, "Ky#", &parent, &name, &namelen))
        return NULL;
    Entry *e = find_name(parent, name, (size_t)namelen);
    if (e != NULL)
        unlink_entry(e);
    Py_RETURN_NONE;
}

static PyObject *py_clear(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    for (size_t i = 0; i < nbuckets; i++)
        while (by_ino[i])
            unlink_entry(by_ino[i]);
    Py_RETURN_NONE;
}

static PyObject *py_holds(PyObject *self, PyObject *args) {
    (void)self;
    Entry *e;
    if (entry_arg(args, &e) != 0)
        return NULL;
    return PyBool_FromLong(e != NULL);
}

static PyObject *py_events(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    uint64_t v;
    if (event_fd >= 0 && read(event_fd, &v, sizeof v) < 0 && errno != EAGAIN)
        return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *out = PyList_New((Py_ssize_t)nopened);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < nopened; i++) {
        PyObject *n = PyLong_FromUnsignedLongLong(opened_inos[i]);
        if (n == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, n);
    }
    nopened = 0;
    return out;
}

static PyObject *py_event_fd(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    return PyLong_FromLong(event_fd);
}

static PyObject *py_counters(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (int i = 0; i < C_COUNTERS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(counters[i]);
        if (v == NULL || PyDict_SetItemString(d, counter_names[i], v) != 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    PyObject *v = PyLong_FromUnsignedLongLong(held_bytes);
    if (v == NULL || PyDict_SetItemString(d, "fast_held_bytes", v) != 0) {
        Py_XDECREF(v);
        Py_DECREF(d);
        return NULL;
    }
    Py_DECREF(v);
    return d;
}

static PyMethodDef methods[] = {
    {"active", py_active, METH_NOARGS, "True once pyfuse3's session was made through this module."},
    {"enable", py_enable, METH_VARARGS, "enable(on, limit_bytes, max_entries) -> whether requests are now "
                                        "answered here."},
    {"add", py_add, METH_VARARGS, "add(ino, parent, name, generation, mode, nlink, uid, gid, size, atime_ns, "
                                  "mtime_ns, ctime_ns, entry_timeout, attr_timeout, valid_until, data|None) "
                                  "-> whether the bytes are held."},
    {"forget", py_forget, METH_VARARGS, "forget(ino): answer nothing more of this inode."},
    {"forget_name", py_forget_name, METH_VARARGS, "forget_name(parent, name): nor of this name."},
    {"drop_data", py_drop_data, METH_VARARGS, "drop_data(ino): let its bytes go (it was read elsewhere)."},
    {"open_size", py_open_size, METH_VARARGS, "open_size(ino) -> the size open here (not stale), or None."},
    {"stale_other_sizes", py_stale_other_sizes, METH_VARARGS,
     "stale_other_sizes(ino, size) -> how many handles here of another size were made stale."},
    {"clear", py_clear, METH_NOARGS, "Forget every entry."},
    {"holds", py_holds, METH_VARARGS, "holds(ino) -> whether the inode has an entry."},
    {"events", py_events, METH_NOARGS, "The inodes opened here since the last call, in order."},
    {"event_fd", py_event_fd, METH_NOARGS, "An eventfd readable while events() has some."},
    {"counters", py_counters, METH_NOARGS, "Requests answered here, and the bytes held."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastfuse", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastfuse(void) {
    return PyModule_Create(&module);
}
