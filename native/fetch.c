/* cachefs._fetch: S3 GETs on libcurl's multi interface in a thread of their own, bodies received
 * straight into buffers the caller hands over, no Python in the transfer.
 *
 * Why: with pycurl, every readiness of every socket, every header line and every received chunk
 * of a GET was a Python call in the trio thread (a third of its time per cold small file,
 * docs/BENCHMARKS.md). Here one thread owns a CURLM and runs it without the GIL, through libcurl's
 * socket interface (its sockets in an epoll set of the thread's own: curl_multi_perform walks every
 * transfer at each wake-up, which costs ~0.2 ms of CPU per GET at 64 in flight); the trio thread
 * only submits a transfer (one call) and,
 * when the eventfd this module exposes becomes readable, drains what finished (one call for a
 * batch).
 *
 * Threads and ownership. submit() and drain() and cancel() and close() are called with the GIL
 * (from the trio thread). submit() sets up a whole easy handle and queues it; the worker thread
 * adds it to the multi. The worker touches only C memory: the easy handle, the transfer's raw
 * header and error-body bytes, and the memory of the body buffer, which stays exported (a
 * Py_buffer held since submit) until drain() hands the transfer back, so it cannot move or be
 * freed meanwhile. Python objects are made and released only by drain(), with the GIL. One mutex
 * guards the queues between them (submitted, cancelled, done); each side wakes the other with an
 * eventfd (the worker's is written once until it is read: a burst of submissions costs one write).
 *
 * A body lands in the buffer only when the answer is 200/206 with a Content-Length equal to the
 * buffer's length, or none (a longer body aborts the transfer: CURLE_WRITE_ERROR); any other answer's body
 * is kept, up to ERROR_BODY_MAX bytes, for the caller to read S3's error from. Sigv4 signing is
 * libcurl's (CURLOPT_AWS_SIGV4), as in the pycurl engine (cachefs/store/curlengine.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define ERROR_BODY_MAX (64 * 1024)
#define HEADERS_MAX (64 * 1024)
#define RECEIVE_BUFFER (512 * 1024)
#define ANSWERED (-1000)        /* a drain record's code: the answer's headers are in, body to come */

typedef struct Xfer {
    long long id;
    CURL *easy;
    struct curl_slist *headers;
    Py_buffer body;             /* held while the worker may write into it */
    int has_body;
    size_t pos;                 /* bytes of body received (into `body` or `err`) */
    long status;
    long long content_length;   /* -1: not announced */
    int into_body;              /* decided when the headers are complete */
    int want_answered;
    int answered_pending;       /* an ANSWERED record is due (set by the worker) */
    int cancelled;
    int reusable;               /* set up whole by submit: its handle may serve another transfer */
    char *hdr;                  /* the final answer's header lines, raw */
    size_t hdr_len, hdr_cap;
    char *err;                  /* a body that does not go into `body` (an error answer) */
    size_t err_len, err_cap;
    long long headers_at_ns;    /* CLOCK_MONOTONIC when the headers were complete (0: never) */
    CURLcode result;
    long connects;
    char errbuf[CURL_ERROR_SIZE];
    struct Xfer *next;
    struct Xfer *prev;          /* in the worker's active list */
} Xfer;

typedef struct {
    PyObject_HEAD
    CURLM *multi;
    int efd;                    /* to the trio side: drain() has news */
    int wake_fd;                /* to the worker: submitted or cancelled (in its epoll set) */
    int ep;                     /* the worker's epoll set: libcurl's sockets and wake_fd */
    int wake_pending;           /* atomic: a wake-up is written and not yet read */
    long long timer_at_ns;      /* the worker's: when libcurl wants socket_action(TIMEOUT); -1 none */
    pthread_t thread;
    int started;
    int stop;                   /* under lock */
    pthread_mutex_t lock;
    Xfer *submitted, *submitted_tail;   /* under lock: to add */
    long long *cancels;                 /* under lock: ids to stop */
    size_t n_cancels, cap_cancels;
    Xfer *done, *done_tail;             /* under lock: finished or stopped, for drain() */
    long long *answered;                /* under lock: ids whose answer has begun */
    size_t n_answered, cap_answered;
    Xfer *active;               /* the worker's own: in the multi */
    long n_active_total;        /* submitted and not yet drained (GIL side only) */
    CURL **free_easy;           /* GIL side only: reusable handles */
    size_t n_free, cap_free;
    long long next_id;
    /* per-fetcher settings */
    long connect_timeout_ms, low_speed_time;
    char *cainfo, *useragent;
    int closed;
} Fetcher;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 1024;
    while (n < need)
        n *= 2;
    char *p = realloc(*buf, n);
    if (p == NULL)
        return -1;
    *buf = p;
    *cap = n;
    return 0;
}

static void notify(Fetcher *f)
{
    uint64_t one = 1;
    ssize_t r;
    do {
        r = write(f->efd, &one, sizeof one);
    } while (r < 0 && errno == EINTR);     /* EAGAIN: the counter is already non-zero: woken anyway */
}

/* ---- libcurl's callbacks: in the worker thread, without the GIL ------------------------------ */

static size_t header_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    Xfer *x = userdata;
    size_t n = size * nmemb;
    if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
        /* a new answer (a 100 Continue's or a redirect's lines are not this one's) */
        const char *sp = memchr(ptr, ' ', n);
        x->status = 0;
        if (sp != NULL)
            for (const char *p = sp + 1; p < ptr + n && *p >= '0' && *p <= '9'; p++)
                x->status = x->status * 10 + (*p - '0');
        x->hdr_len = 0;
        x->content_length = -1;
        return n;
    }
    if ((n == 2 && ptr[0] == '\r' && ptr[1] == '\n') || (n == 1 && ptr[0] == '\n')) {
        if (x->status >= 200) {
            x->headers_at_ns = now_ns();
            /* no Content-Length (chunked): into the buffer too, a body longer than it aborts */
            x->into_body = x->has_body && (x->status == 200 || x->status == 206)
                           && (x->content_length == (long long)x->body.len || x->content_length < 0);
            if (x->want_answered && (x->status == 200 || x->status == 206))
                x->answered_pending = 1;
        }
        return n;
    }
    if (n > 15 && strncasecmp(ptr, "content-length:", 15) == 0) {
        long long v = 0;
        const char *p = ptr + 15, *end = ptr + n;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p < end && *p >= '0' && *p <= '9') {
            for (; p < end && *p >= '0' && *p <= '9'; p++)
                v = v * 10 + (*p - '0');
            x->content_length = v;
        }
    }
    if (x->hdr_len + n <= HEADERS_MAX && grow(&x->hdr, &x->hdr_cap, x->hdr_len + n) == 0) {
        memcpy(x->hdr + x->hdr_len, ptr, n);
        x->hdr_len += n;
    }
    return n;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    Xfer *x = userdata;
    size_t n = size * nmemb;
    if (x->into_body) {
        if (x->pos + n > (size_t)x->body.len)
            return 0;                       /* more than announced: libcurl ends the transfer */
        memcpy((char *)x->body.buf + x->pos, ptr, n);
        x->pos += n;
        return n;
    }
    size_t keep = x->err_len < ERROR_BODY_MAX ? ERROR_BODY_MAX - x->err_len : 0;
    if (keep > n)
        keep = n;
    if (keep && grow(&x->err, &x->err_cap, x->err_len + keep) == 0) {
        memcpy(x->err + x->err_len, ptr, keep);
        x->err_len += keep;
    }
    x->pos += n;
    return n;
}

/* ---- the worker -------------------------------------------------------------------------------- */

static void unlink_active(Fetcher *f, Xfer *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        f->active = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->next = x->prev = NULL;
}

static void push_done(Fetcher *f, Xfer *x)   /* under lock */
{
    x->next = NULL;
    if (f->done_tail)
        f->done_tail->next = x;
    else
        f->done = x;
    f->done_tail = x;
}

/* libcurl says which sockets it wants watched for what: kept in the worker's epoll set
 * (level-triggered, so what libcurl leaves unread is reported again). */
static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    Fetcher *f = userp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(f->ep, EPOLL_CTL_DEL, s, NULL);   /* may be closed already: then it left by itself */
        curl_multi_assign(f->multi, s, NULL);
        return 0;
    }
    struct epoll_event ev = {0};
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    ev.data.fd = s;
    if (socketp == NULL) {
        if (epoll_ctl(f->ep, EPOLL_CTL_ADD, s, &ev) < 0 && errno == EEXIST)
            epoll_ctl(f->ep, EPOLL_CTL_MOD, s, &ev);    /* a number reused after a close */
        curl_multi_assign(f->multi, s, (void *)1);
    } else if (epoll_ctl(f->ep, EPOLL_CTL_MOD, s, &ev) < 0 && errno == ENOENT) {
        epoll_ctl(f->ep, EPOLL_CTL_ADD, s, &ev);        /* closed and reused meanwhile */
    }
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    Fetcher *f = userp;
    (void)multi;
    f->timer_at_ns = timeout_ms < 0 ? -1 : now_ns() + (long long)timeout_ms * 1000000LL;
    return 0;
}

/* Transfers libcurl is done with go to the done list; 1 if there were any. */
static int collect(Fetcher *f)
{
    int finished = 0, left;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(f->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        Xfer *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        if (x == NULL)
            continue;
        x->result = msg->data.result;
        curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &x->connects);
        curl_multi_remove_handle(f->multi, x->easy);
        unlink_active(f, x);
        pthread_mutex_lock(&f->lock);
        push_done(f, x);
        pthread_mutex_unlock(&f->lock);
        finished = 1;
    }
    return finished;
}

/* What the trio side queued: new transfers into the multi, cancelled ones out. 1 if it stopped any;
 * -1 when close() asked the worker to end. */
static int take_queue(Fetcher *f)
{
    uint64_t count;
    /* read, then clear: a wake-up written after the read finds the flag set and its submission
     * in the queue taken below, or leaves the eventfd readable for the next turn */
    while (read(f->wake_fd, &count, sizeof count) < 0 && errno == EINTR)
        ;
    __atomic_store_n(&f->wake_pending, 0, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&f->lock);
    int stop = f->stop;
    Xfer *add = f->submitted;
    f->submitted = f->submitted_tail = NULL;
    size_t nc = f->n_cancels;
    long long *cancels = NULL;
    if (nc > 0 && (cancels = malloc(nc * sizeof *cancels)) != NULL) {
        memcpy(cancels, f->cancels, nc * sizeof *cancels);
        f->n_cancels = 0;
    } else {
        nc = 0;                             /* no memory: they stay queued for the next turn */
    }
    if (stop) {                             /* close(): the GIL side takes every transfer back */
        while (add) {
            Xfer *next = add->next;
            add->cancelled = 1;
            push_done(f, add);
            add = next;
        }
    }
    pthread_mutex_unlock(&f->lock);
    if (stop) {
        free(cancels);
        return -1;
    }
    while (add) {
        Xfer *next = add->next;
        add->prev = NULL;
        add->next = f->active;
        if (f->active)
            f->active->prev = add;
        f->active = add;
        CURLMcode mc = curl_multi_add_handle(f->multi, add->easy);   /* its timer at 0: started below */
        if (mc != CURLM_OK) {
            unlink_active(f, add);
            add->result = CURLE_FAILED_INIT;
            snprintf(add->errbuf, sizeof add->errbuf, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
            pthread_mutex_lock(&f->lock);
            push_done(f, add);
            pthread_mutex_unlock(&f->lock);
        }
        add = next;
    }
    int stopped = 0;
    for (size_t i = 0; i < nc; i++) {
        for (Xfer *x = f->active; x; x = x->next) {
            if (x->id == cancels[i]) {
                curl_multi_remove_handle(f->multi, x->easy);
                unlink_active(f, x);
                x->cancelled = 1;
                pthread_mutex_lock(&f->lock);
                push_done(f, x);
                pthread_mutex_unlock(&f->lock);
                stopped = 1;
                break;
            }
        }
    }
    free(cancels);
    return stopped;
}

static void *worker(void *arg)
{
    Fetcher *f = arg;
    struct epoll_event evs[64];
    int running;
    for (;;) {
        int wait_ms = 1000;
        if (f->timer_at_ns >= 0) {
            long long left = f->timer_at_ns - now_ns();
            wait_ms = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
            if (wait_ms > 1000)
                wait_ms = 1000;
        }
        int n = epoll_wait(f->ep, evs, 64, wait_ms);
        int news = 0;
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == f->wake_fd) {
                int r = take_queue(f);
                if (r < 0)
                    return NULL;
                news |= r;
                continue;
            }
            uint32_t e = evs[i].events;
            int flags = (e & (EPOLLIN | EPOLLHUP) ? CURL_CSELECT_IN : 0) | (e & EPOLLOUT ? CURL_CSELECT_OUT : 0)
                        | (e & EPOLLERR ? CURL_CSELECT_ERR : 0);
            curl_multi_socket_action(f->multi, fd, flags, &running);
        }
        if (f->timer_at_ns >= 0 && now_ns() >= f->timer_at_ns) {
            f->timer_at_ns = -1;            /* libcurl sets the next one from inside socket_action */
            curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        }
        news |= collect(f);
        /* answers that have begun: told once each (for hedging: an answered GET needs no duplicate) */
        for (Xfer *x = f->active; x; x = x->next) {
            if (x->answered_pending) {
                x->answered_pending = 0;
                x->want_answered = 0;
                pthread_mutex_lock(&f->lock);
                if (f->n_answered < f->cap_answered)
                    f->answered[f->n_answered++] = x->id;
                pthread_mutex_unlock(&f->lock);
                news = 1;
            }
        }
        if (news)
            notify(f);
    }
}

static void wake(Fetcher *f)
{
    if (__atomic_exchange_n(&f->wake_pending, 1, __ATOMIC_SEQ_CST))
        return;                             /* written already and not yet read */
    uint64_t one = 1;
    while (write(f->wake_fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

/* ---- the GIL side -------------------------------------------------------------------------------- */

static void xfer_free(Fetcher *f, Xfer *x)   /* with the GIL; x is out of the multi */
{
    if (x->has_body)
        PyBuffer_Release(&x->body);
    curl_slist_free_all(x->headers);
    free(x->hdr);
    free(x->err);
    if (x->easy) {
        /* Not reused: a handle whose submit failed, or a cancelled one (libcurl 7.88 refuses a
         * new CURLOPT_BUFFERSIZE on a handle removed while it waited for a connection, which
         * would fail every later submit that took it). */
        curl_easy_reset(x->easy);           /* no pointer into this transfer stays set */
        if (!f->closed && !x->cancelled && x->reusable && f->n_free < f->cap_free)
            f->free_easy[f->n_free++] = x->easy;
        else
            curl_easy_cleanup(x->easy);
    }
    free(x);
    f->n_active_total--;
}

static void fetcher_shutdown(Fetcher *f)
{
    if (f->closed)
        return;
    if (f->started) {
        pthread_mutex_lock(&f->lock);
        f->stop = 1;
        pthread_mutex_unlock(&f->lock);
        f->wake_pending = 0;
        wake(f);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(f->thread, NULL);
        Py_END_ALLOW_THREADS
        f->started = 0;
    }
    f->closed = 1;
    /* every transfer back: the active ones out of the multi first */
    while (f->active) {
        Xfer *x = f->active;
        curl_multi_remove_handle(f->multi, x->easy);
        unlink_active(f, x);
        xfer_free(f, x);
    }
    Xfer *lists[2] = {f->done, f->submitted};
    f->done = f->done_tail = f->submitted = f->submitted_tail = NULL;
    for (int i = 0; i < 2; i++) {
        for (Xfer *x = lists[i]; x;) {
            Xfer *next = x->next;
            xfer_free(f, x);
            x = next;
        }
    }
    for (size_t i = 0; i < f->n_free; i++)
        curl_easy_cleanup(f->free_easy[i]);
    f->n_free = 0;
    if (f->multi) {
        curl_multi_cleanup(f->multi);
        f->multi = NULL;
    }
    int *fds[3] = {&f->efd, &f->wake_fd, &f->ep};
    for (int i = 0; i < 3; i++) {
        if (*fds[i] >= 0) {
            close(*fds[i]);
            *fds[i] = -1;
        }
    }
}

static void Fetcher_dealloc(Fetcher *f)
{
    fetcher_shutdown(f);
    pthread_mutex_destroy(&f->lock);
    free(f->cancels);
    free(f->answered);
    free(f->free_easy);
    free(f->cainfo);
    free(f->useragent);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyObject *Fetcher_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    Fetcher *f = (Fetcher *)type->tp_alloc(type, 0);
    if (f != NULL) {
        f->efd = f->wake_fd = f->ep = -1;
        pthread_mutex_init(&f->lock, NULL);
    }
    return (PyObject *)f;
}

static int Fetcher_init(Fetcher *f, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_host_connections", "connect_timeout_ms", "low_speed_time", "cainfo",
                             "useragent", NULL};
    long max_conn, connect_ms, low_speed;
    const char *cainfo = NULL, *agent = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "lllzz:Fetcher", kwlist, &max_conn, &connect_ms, &low_speed,
                                     &cainfo, &agent))
        return -1;
    if (f->multi != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Fetcher: already initialised");
        return -1;
    }
    f->cap_cancels = 1024;
    f->cap_answered = 4096;
    f->cap_free = 256;
    f->cancels = calloc(f->cap_cancels, sizeof *f->cancels);
    f->answered = calloc(f->cap_answered, sizeof *f->answered);
    f->free_easy = calloc(f->cap_free, sizeof *f->free_easy);
    f->cainfo = cainfo ? strdup(cainfo) : NULL;
    f->useragent = agent ? strdup(agent) : NULL;
    if (!f->cancels || !f->answered || !f->free_easy || (cainfo && !f->cainfo) || (agent && !f->useragent)) {
        PyErr_NoMemory();
        return -1;
    }
    f->connect_timeout_ms = connect_ms;
    f->low_speed_time = low_speed < 1 ? 1 : low_speed;
    f->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (f->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    f->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    f->ep = epoll_create1(EPOLL_CLOEXEC);
    if (f->wake_fd < 0 || f->ep < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = f->wake_fd};
    if (epoll_ctl(f->ep, EPOLL_CTL_ADD, f->wake_fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    f->timer_at_ns = -1;
    f->multi = curl_multi_init();
    if (f->multi == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "curl_multi_init failed");
        return -1;
    }
    curl_multi_setopt(f->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_conn);
    /* The pool of idle connections: libcurl's default is 4x the transfers in flight, so one GET
     * running alone after a burst of 64 closed all but 4 of their connections, and the next burst
     * opened them again (a tenth of a hinted epoch's GETs paid a connection, behind 20 ms an RTT
     * more: docs/BENCHMARKS.md). */
    curl_multi_setopt(f->multi, CURLMOPT_MAXCONNECTS, max_conn);
    curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f);
    curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f);
    /* the worker takes no signal: they are the trio thread's (Python's handlers, pyfuse3's) */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&f->thread, NULL, worker, f);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    f->started = 1;
    return 0;
}

static PyObject *Fetcher_fileno(Fetcher *f, PyObject *Py_UNUSED(unused))
{
    return PyLong_FromLong(f->efd);
}

#define SETOPT(opt, val)                                                                    \
    do {                                                                                    \
        CURLcode c_ = curl_easy_setopt(easy, opt, val);                                     \
        if (c_ != CURLE_OK) {                                                               \
            PyErr_Format(PyExc_ValueError, "curl_easy_setopt(%s): %s", #opt, curl_easy_strerror(c_)); \
            goto fail;                                                                      \
        }                                                                                   \
    } while (0)

/* submit(url, headers, body, sigv4, userpwd, path_as_is, want_answered) -> id */
static PyObject *Fetcher_submit(Fetcher *f, PyObject *args)
{
    const char *url, *sigv4 = NULL, *userpwd = NULL;
    PyObject *headers, *body;
    int as_is, want_answered;
    if (!PyArg_ParseTuple(args, "sOOzzpp:submit", &url, &headers, &body, &sigv4, &userpwd, &as_is, &want_answered))
        return NULL;
    if (f->closed) {
        PyErr_SetString(PyExc_RuntimeError, "submit: the fetcher is closed");
        return NULL;
    }
    if (!PyList_Check(headers)) {
        PyErr_SetString(PyExc_TypeError, "submit: headers must be a list of str");
        return NULL;
    }
    Xfer *x = calloc(1, sizeof *x);
    if (x == NULL)
        return PyErr_NoMemory();
    x->content_length = -1;
    CURL *easy = NULL;
    if (body != Py_None) {
        if (PyObject_GetBuffer(body, &x->body, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            free(x);
            return NULL;
        }
        x->has_body = 1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        const char *h = PyUnicode_AsUTF8(PyList_GET_ITEM(headers, i));
        if (h == NULL)
            goto fail;
        struct curl_slist *l = curl_slist_append(x->headers, h);
        if (l == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        x->headers = l;
    }
    if (f->n_free > 0) {
        easy = f->free_easy[--f->n_free];    /* reset when it was given back */
    } else if ((easy = curl_easy_init()) == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "curl_easy_init failed");
        goto fail;
    }
    x->easy = easy;
    f->n_active_total++;      /* xfer_free undoes it, also on failure below */
    SETOPT(CURLOPT_URL, url);
    SETOPT(CURLOPT_HTTPGET, 1L);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, f->connect_timeout_ms);
    SETOPT(CURLOPT_LOW_SPEED_LIMIT, 1L);    /* no data for low_speed_time seconds ends it */
    SETOPT(CURLOPT_LOW_SPEED_TIME, f->low_speed_time);
    SETOPT(CURLOPT_BUFFERSIZE, (long)RECEIVE_BUFFER);
    SETOPT(CURLOPT_TCP_NODELAY, 1L);
    if (f->useragent)
        SETOPT(CURLOPT_USERAGENT, f->useragent);
    if (f->cainfo)
        SETOPT(CURLOPT_CAINFO, f->cainfo);
    SETOPT(CURLOPT_PATH_AS_IS, as_is ? 1L : 0L);
    if (sigv4 != NULL) {
        SETOPT(CURLOPT_AWS_SIGV4, sigv4);
        SETOPT(CURLOPT_USERPWD, userpwd ? userpwd : "");
    }
    if (x->headers)
        SETOPT(CURLOPT_HTTPHEADER, x->headers);
    SETOPT(CURLOPT_HEADERFUNCTION, header_cb);
    SETOPT(CURLOPT_HEADERDATA, x);
    SETOPT(CURLOPT_WRITEFUNCTION, write_cb);
    SETOPT(CURLOPT_WRITEDATA, x);
    SETOPT(CURLOPT_ERRORBUFFER, x->errbuf);
    SETOPT(CURLOPT_PRIVATE, (char *)x);
    x->id = ++f->next_id;
    x->want_answered = want_answered;
    x->reusable = 1;
    pthread_mutex_lock(&f->lock);
    if (f->submitted_tail)
        f->submitted_tail->next = x;
    else
        f->submitted = x;
    f->submitted_tail = x;
    pthread_mutex_unlock(&f->lock);
    wake(f);
    return PyLong_FromLongLong(x->id);
fail:
    if (x->easy == NULL) {
        if (x->has_body)
            PyBuffer_Release(&x->body);
        curl_slist_free_all(x->headers);
        free(x);
    } else {
        xfer_free(f, x);
    }
    return NULL;
}

static PyObject *Fetcher_cancel(Fetcher *f, PyObject *arg)
{
    long long id = PyLong_AsLongLong(arg);
    if (id == -1 && PyErr_Occurred())
        return NULL;
    if (f->closed)
        Py_RETURN_NONE;
    pthread_mutex_lock(&f->lock);
    if (f->n_cancels == f->cap_cancels) {
        long long *p = realloc(f->cancels, 2 * f->cap_cancels * sizeof *p);
        if (p == NULL) {
            pthread_mutex_unlock(&f->lock);
            return PyErr_NoMemory();
        }
        f->cancels = p;
        f->cap_cancels *= 2;
    }
    f->cancels[f->n_cancels++] = id;
    pthread_mutex_unlock(&f->lock);
    wake(f);
    Py_RETURN_NONE;
}

/* drain() -> [(id, code, message, status, raw_headers, body_len, error_body, connects, headers_at_ns)]
 * code ANSWERED: that transfer's answer has begun (the other fields empty). Stopped transfers
 * (cancel) are not reported. */
static PyObject *Fetcher_drain(Fetcher *f, PyObject *Py_UNUSED(unused))
{
    uint64_t count;
    if (f->efd >= 0 && read(f->efd, &count, sizeof count) < 0 && errno != EAGAIN)
        return PyErr_SetFromErrno(PyExc_OSError);
    pthread_mutex_lock(&f->lock);
    Xfer *done = f->done;
    f->done = f->done_tail = NULL;
    size_t na = f->n_answered;
    long long answered[4096];
    memcpy(answered, f->answered, na * sizeof *answered);
    f->n_answered = 0;
    pthread_mutex_unlock(&f->lock);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto fail;
    for (size_t i = 0; i < na; i++) {
        PyObject *rec = Py_BuildValue("(Lis)", answered[i], ANSWERED, "");
        if (rec == NULL || PyList_Append(out, rec) < 0) {
            Py_XDECREF(rec);
            goto fail;
        }
        Py_DECREF(rec);
    }
    while (done) {
        Xfer *x = done;
        done = x->next;
        if (!x->cancelled) {
            PyObject *rec = Py_BuildValue("(Lisly#ny#lL)", x->id, (int)x->result,
                                          x->result != CURLE_OK ? (x->errbuf[0] ? x->errbuf : curl_easy_strerror(x->result)) : "",
                                          x->status, x->hdr ? x->hdr : "", (Py_ssize_t)x->hdr_len,
                                          (Py_ssize_t)(x->into_body ? x->pos : 0),
                                          x->err ? x->err : "", (Py_ssize_t)x->err_len, x->connects, x->headers_at_ns);
            if (rec == NULL || PyList_Append(out, rec) < 0) {
                Py_XDECREF(rec);
                xfer_free(f, x);
                goto fail;
            }
            Py_DECREF(rec);
        }
        xfer_free(f, x);
    }
    return out;
fail:
    while (done) {
        Xfer *x = done;
        done = x->next;
        xfer_free(f, x);
    }
    Py_XDECREF(out);
    return NULL;
}

static PyObject *Fetcher_close(Fetcher *f, PyObject *Py_UNUSED(unused))
{
    fetcher_shutdown(f);
    Py_RETURN_NONE;
}

static PyObject *Fetcher_pending(Fetcher *f, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(f->n_active_total);
}

static PyMethodDef Fetcher_methods[] = {
    {"fileno", (PyCFunction)Fetcher_fileno, METH_NOARGS, "The eventfd that is readable when drain() has news."},
    {"submit", (PyCFunction)Fetcher_submit, METH_VARARGS,
     "submit(url, headers, body, sigv4, userpwd, path_as_is, want_answered) -> id: start a GET.\n\n"
     "body: a writable buffer of exactly the expected length (or None); it is written into by the\n"
     "worker thread until drain() reports the transfer, and must not be used meanwhile."},
    {"cancel", (PyCFunction)Fetcher_cancel, METH_O, "cancel(id): stop that transfer; it is not reported."},
    {"drain", (PyCFunction)Fetcher_drain, METH_NOARGS,
     "drain() -> [(id, code, message, status, raw_headers, body_len, error_body, connects,\n"
     "headers_at_ns)]: transfers finished since the last call (code: CURLcode, 0 for success;\n"
     "ANSWERED (-1000): only the answer's headers are in, the rest of the record is empty)."},
    {"close", (PyCFunction)Fetcher_close, METH_NOARGS, "Stop the worker and drop every transfer."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Fetcher_getset[] = {
    {"pending", (getter)Fetcher_pending, NULL, "transfers submitted and not yet drained", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FetcherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cachefs._fetch.Fetcher",
    .tp_basicsize = sizeof(Fetcher),
    .tp_dealloc = (destructor)Fetcher_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "GETs on a libcurl multi run by a thread of its own (see native/fetch.c).",
    .tp_methods = Fetcher_methods,
    .tp_getset = Fetcher_getset,
    .tp_init = (initproc)Fetcher_init,
    .tp_new = Fetcher_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cachefs._fetch",
    .m_doc = "S3 GETs without Python in the transfer (see cachefs/store/curlfetch.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fetch(void)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        PyErr_SetString(PyExc_ImportError, "curl_global_init failed");
        return NULL;
    }
    curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    if (v->version_num < 0x074B00) {       /* 7.75: CURLOPT_AWS_SIGV4 */
        PyErr_Format(PyExc_ImportError, "libcurl %s has no CURLOPT_AWS_SIGV4 (needs 7.75)", v->version);
        return NULL;
    }
    if (PyType_Ready(&FetcherType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Fetcher", (PyObject *)&FetcherType) < 0
        || PyModule_AddIntConstant(m, "ANSWERED", ANSWERED) < 0
        || PyModule_AddStringConstant(m, "LIBCURL_VERSION", v->version) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
