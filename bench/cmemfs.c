/* The ceiling of a FUSE data path written in C on this machine: bench/memfs.py's job (a read-only
 * filesystem serving a directory tree's bytes from memory, loaded once at start, no object store,
 * no cache logic) on libfuse3's low-level API, one thread, the same timeouts and keep_cache.
 * bench.floor's `paired+cmemfs` pairs it with pycurl's GETs: what the cheapest FUSE client there
 * is would reach, beside the cheapest Python one (`paired+memfs`).
 *
 *   cmemfs SOURCE_DIR MOUNTPOINT      (foreground; SIGTERM or umount ends it)
 *
 * Built by bench/systems.py (CMemoryFuse) with: cc -O2 cmemfs.c $(pkg-config --cflags --libs fuse3)
 */
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TIMEOUT_S 3600.0   /* the tree never changes while mounted */

struct node {
    char *name;
    fuse_ino_t parent;
    int is_dir;
    char *data;
    size_t size;
};

static struct node *nodes;   /* nodes[ino]: ino 1 is the root; 0 is unused */
static size_t n_nodes, cap_nodes;

static fuse_ino_t add_node(const char *name, fuse_ino_t parent, int is_dir, char *data, size_t size)
{
    if (n_nodes == cap_nodes) {
        cap_nodes = cap_nodes ? 2 * cap_nodes : 1024;
        nodes = realloc(nodes, cap_nodes * sizeof *nodes);
        if (!nodes) {
            perror("cmemfs: realloc");
            exit(1);
        }
    }
    nodes[n_nodes] = (struct node){strdup(name), parent, is_dir, data, size};
    return n_nodes++;
}

static char *slurp(const char *path, size_t *size)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(path);
        exit(1);
    }
    char *buf = malloc(st.st_size ? st.st_size : 1);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, st.st_size - got);
        if (n <= 0) {
            perror(path);
            exit(1);
        }
        got += n;
    }
    close(fd);
    *size = got;
    return buf;
}

static void load(const char *dir, fuse_ino_t ino)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d) {
        perror(dir);
        exit(1);
    }
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            load(path, add_node(e->d_name, ino, 1, NULL, 0));
        } else if (S_ISREG(st.st_mode)) {
            size_t size;
            char *data = slurp(path, &size);
            add_node(e->d_name, ino, 0, data, size);
        }
    }
    closedir(d);
}

static void fill_attr(fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_mode = nodes[ino].is_dir ? S_IFDIR | 0555 : S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = nodes[ino].size;
    st->st_blksize = 1 << 20;
    st->st_blocks = (nodes[ino].size + 511) / 512;
}

/* (parent, name) -> ino: an open-addressing hash table, FNV-1a, at most half full. */
static fuse_ino_t *table;
static size_t table_mask;

static size_t slot_of(fuse_ino_t parent, const char *name)
{
    unsigned long long h = 1469598103934665603ULL ^ parent;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return (size_t)h & table_mask;
}

static void index_names(void)
{
    size_t size = 1;
    while (size < 2 * n_nodes)
        size <<= 1;
    table = calloc(size, sizeof *table);
    table_mask = size - 1;
    for (size_t i = 2; i < n_nodes; i++) {
        size_t s = slot_of(nodes[i].parent, nodes[i].name);
        while (table[s])
            s = (s + 1) & table_mask;
        table[s] = i;
    }
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    for (size_t s = slot_of(parent, name); table[s]; s = (s + 1) & table_mask) {
        fuse_ino_t i = table[s];
        if (nodes[i].parent == parent && !strcmp(nodes[i].name, name)) {
            struct fuse_entry_param e = {.ino = i, .attr_timeout = TIMEOUT_S, .entry_timeout = TIMEOUT_S};
            fill_attr(i, &e.attr);
            fuse_reply_entry(req, &e);
            return;
        }
    }
    fuse_reply_err(req, ENOENT);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    struct stat st;
    if (ino >= n_nodes) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    fill_attr(ino, &st);
    fuse_reply_attr(req, &st, TIMEOUT_S);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if ((fi->flags & O_ACCMODE) != O_RDONLY) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (nodes[ino].is_dir) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)fi;
    struct node *n = &nodes[ino];
    if ((size_t)off >= n->size) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (size > n->size - off)
        size = n->size - off;
    fuse_reply_buf(req, n->data + off, size);
}

int main(int argc, char *argv[])
{
    if (argc != 3) {
        fprintf(stderr, "usage: cmemfs SOURCE_DIR MOUNTPOINT\n");
        return 2;
    }
    add_node("", 0, 1, NULL, 0);   /* ino 0: unused */
    add_node("", 1, 1, NULL, 0);   /* ino 1: the root */
    load(argv[1], 1);
    index_names();
    static const struct fuse_lowlevel_ops ops = {
        .lookup = op_lookup, .getattr = op_getattr, .open = op_open, .read = op_read,
    };
    char *fargv[] = {argv[0], "-o", "fsname=bench-cmemfs,ro,default_permissions,allow_other", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (!se || fuse_set_signal_handlers(se) != 0 || fuse_session_mount(se, argv[2]) != 0) {
        fprintf(stderr, "cmemfs: cannot mount %s\n", argv[2]);
        return 1;
    }
    int rc = fuse_session_loop(se);
    fuse_session_unmount(se);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    return rc ? 1 : 0;
}
