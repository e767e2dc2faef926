/* Log compaction's per-record work, in C: the bounded key -> latest offset map and the
 * walks over a batch's records that fill it and filter a batch against it.
 *
 * The map is Kafka's SkimpyOffsetMap idea: a fixed array of slots, each a 128-bit hash of
 * a key (MurmurHash3 x64-128, written here from the algorithm's description) and the
 * latest offset seen for it: 24 bytes per key whatever the key's size, so a memory budget
 * (log.cleaner.dedupe.buffer.size) bounds the keys one pass can hold. Open addressing
 * with linear probing; the map refuses new keys past its load factor, and the cleaner
 * then ends its pass there and starts another.
 *
 * Two record layouts are walked, both without building Python objects per record:
 *
 * - kvlog's native payload: one CBOR array of columns
 *   [offset_deltas | null, timestamp_deltas | int, keys, values (, headers)]
 *   (kvlog/batch.py). Filtering copies the kept entries' CBOR items verbatim and writes
 *   new array heads and an explicit offset_deltas column.
 * - Kafka's records section (kvlog/kafka_batch.py): length-prefixed varint records.
 *   Filtering copies the kept records verbatim: their offset and timestamp deltas are
 *   relative to the batch's base offset and first timestamp, which do not change.
 *
 * Errors: ValueError for a malformed payload; NotImplementedError for valid CBOR this
 * walker does not read (indefinite lengths), for which kvlog/_compact_py.py (the same
 * functions over cbor2) takes over with the same map through its put/get methods.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

/* -- MurmurHash3 x64-128 ----------------------------------------------------------------- */

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

static inline uint64_t load64(const unsigned char *p)
{
    /* Little-endian reads on every host: the hash never leaves the process, but one
     * definition keeps it the same everywhere. */
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

static void murmur3_128(const unsigned char *data, Py_ssize_t len, uint64_t *o1, uint64_t *o2)
{
    const uint64_t c1 = 0x87c37b91114253d5ULL, c2 = 0x4cf5ad432745937fULL;
    uint64_t h1 = 0, h2 = 0, k1, k2;
    Py_ssize_t nblocks = len / 16;
    for (Py_ssize_t i = 0; i < nblocks; i++) {
        k1 = load64(data + i * 16);
        k2 = load64(data + i * 16 + 8);
        k1 *= c1;
        k1 = rotl64(k1, 31);
        k1 *= c2;
        h1 ^= k1;
        h1 = rotl64(h1, 27);
        h1 += h2;
        h1 = h1 * 5 + 0x52dce729;
        k2 *= c2;
        k2 = rotl64(k2, 33);
        k2 *= c1;
        h2 ^= k2;
        h2 = rotl64(h2, 31);
        h2 += h1;
        h2 = h2 * 5 + 0x38495ab5;
    }
    const unsigned char *tail = data + nblocks * 16;
    k1 = k2 = 0;
    switch (len & 15) {
    case 15: k2 ^= (uint64_t)tail[14] << 48; /* fall through */
    case 14: k2 ^= (uint64_t)tail[13] << 40; /* fall through */
    case 13: k2 ^= (uint64_t)tail[12] << 32; /* fall through */
    case 12: k2 ^= (uint64_t)tail[11] << 24; /* fall through */
    case 11: k2 ^= (uint64_t)tail[10] << 16; /* fall through */
    case 10: k2 ^= (uint64_t)tail[9] << 8; /* fall through */
    case 9:
        k2 ^= (uint64_t)tail[8];
        k2 *= c2;
        k2 = rotl64(k2, 33);
        k2 *= c1;
        h2 ^= k2;
        /* fall through */
    case 8: k1 ^= (uint64_t)tail[7] << 56; /* fall through */
    case 7: k1 ^= (uint64_t)tail[6] << 48; /* fall through */
    case 6: k1 ^= (uint64_t)tail[5] << 40; /* fall through */
    case 5: k1 ^= (uint64_t)tail[4] << 32; /* fall through */
    case 4: k1 ^= (uint64_t)tail[3] << 24; /* fall through */
    case 3: k1 ^= (uint64_t)tail[2] << 16; /* fall through */
    case 2: k1 ^= (uint64_t)tail[1] << 8; /* fall through */
    case 1:
        k1 ^= (uint64_t)tail[0];
        k1 *= c1;
        k1 = rotl64(k1, 31);
        k1 *= c2;
        h1 ^= k1;
    }
    h1 ^= (uint64_t)len;
    h2 ^= (uint64_t)len;
    h1 += h2;
    h2 += h1;
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 += h2;
    h2 += h1;
    if (h1 == 0 && h2 == 0)
        h2 = 1; /* (0, 0) marks an empty slot */
    *o1 = h1;
    *o2 = h2;
}

/* -- the offset map ---------------------------------------------------------------------- */

/* A stretch of a payload: a key's bytes, or a record's or CBOR item's raw bytes. */
typedef struct {
    const unsigned char *start;
    Py_ssize_t len;
} span;

typedef struct {
    uint64_t h1, h2;
    int64_t offset;
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    uint64_t nslots;
    Py_ssize_t size;
    Py_ssize_t max_entries;
    size_t mapped; /* bytes mmap'd for slots (0: they came from calloc) */
} OffsetMap;

/* A large map lives in its own anonymous mapping with transparent huge pages asked for:
 * every lookup is a random access into it, and 2 MiB pages spare most TLB misses. */
#define HUGE_PAGE (2u << 20)

static void free_slots(OffsetMap *m)
{
#ifdef __linux__
    if (m->mapped) {
        munmap(m->slots, m->mapped);
        m->slots = NULL;
        m->mapped = 0;
        return;
    }
#endif
    PyMem_RawFree(m->slots);
    m->slots = NULL;
}

static int alloc_slots(OffsetMap *m, size_t count)
{
    size_t bytes = count * sizeof(Slot);
#ifdef __linux__
    if (bytes >= HUGE_PAGE) {
        size_t length = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
        void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
#ifdef MADV_HUGEPAGE
            madvise(p, length, MADV_HUGEPAGE);
#endif
            m->slots = p;
            m->mapped = length;
            return 0;
        }
    }
#endif
    /* calloc: zeroed, its pages touched only as keys land */
    m->slots = PyMem_RawCalloc(count, sizeof(Slot));
    m->mapped = 0;
    return m->slots == NULL ? -1 : 0;
}

static inline uint64_t home(uint64_t h, uint64_t n)
{
#ifdef __SIZEOF_INT128__
    return (uint64_t)(((unsigned __int128)h * n) >> 64);
#else
    return h % n;
#endif
}

/* The slot holding (h1, h2), or the empty slot where it would go. Terminates: the map
 * never fills past max_entries < nslots. */
static inline Slot *find_slot(OffsetMap *m, uint64_t h1, uint64_t h2)
{
    uint64_t i = home(h1, m->nslots);
    for (;;) {
        Slot *s = &m->slots[i];
        if ((s->h1 == h1 && s->h2 == h2) || (s->h1 == 0 && s->h2 == 0))
            return s;
        if (++i == m->nslots)
            i = 0;
    }
}

/* 1: stored; 0: a new key and the map is full. */
static inline int map_put_hashed(OffsetMap *m, uint64_t h1, uint64_t h2, int64_t offset)
{
    Slot *s = find_slot(m, h1, h2);
    if (s->h1 == 0 && s->h2 == 0) {
        if (m->size >= m->max_entries)
            return 0;
        s->h1 = h1;
        s->h2 = h2;
        s->offset = offset;
        m->size++;
    } else if (offset > s->offset) {
        s->offset = offset;
    }
    return 1;
}

static inline int map_put(OffsetMap *m, const unsigned char *key, Py_ssize_t len, int64_t offset)
{
    uint64_t h1, h2;
    murmur3_128(key, len, &h1, &h2);
    return map_put_hashed(m, h1, h2, offset);
}

static inline int64_t map_get_hashed(OffsetMap *m, uint64_t h1, uint64_t h2)
{
    Slot *s = find_slot(m, h1, h2);
    return (s->h1 == 0 && s->h2 == 0) ? -1 : s->offset;
}

static inline int64_t map_get(OffsetMap *m, const unsigned char *key, Py_ssize_t len)
{
    uint64_t h1, h2;
    murmur3_128(key, len, &h1, &h2);
    return map_get_hashed(m, h1, h2);
}

/* The hashes of a batch's keys, with each one's home slot prefetched: the probes that
 * follow then mostly find their cache lines loaded (a large map misses the caches on
 * nearly every key). */
static int hash_keys(OffsetMap *m, const span *keys, Py_ssize_t n, uint64_t **out)
{
    uint64_t *h = PyMem_Malloc(2 * (size_t)(n > 0 ? n : 1) * sizeof(uint64_t));
    if (h == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (keys[i].len < 0)
            continue;
        murmur3_128(keys[i].start, keys[i].len, &h[2 * i], &h[2 * i + 1]);
#if defined(__GNUC__) || defined(__clang__)
        __builtin_prefetch(&m->slots[home(h[2 * i], m->nslots)]);
#endif
    }
    *out = h;
    return 0;
}

static int OffsetMap_init(OffsetMap *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"slots", "load_factor", NULL};
    Py_ssize_t slots;
    double load = 0.9;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|d", kwlist, &slots, &load))
        return -1;
    if (slots < 2 || load <= 0.0 || load >= 1.0) {
        PyErr_SetString(PyExc_ValueError, "an offset map needs >= 2 slots and 0 < load_factor < 1");
        return -1;
    }
    free_slots(self);
    if (alloc_slots(self, (size_t)slots) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    self->nslots = (uint64_t)slots;
    self->size = 0;
    self->max_entries = (Py_ssize_t)(slots * load);
    if (self->max_entries < 1)
        self->max_entries = 1;
    if (self->max_entries >= slots)
        self->max_entries = slots - 1;
    return 0;
}

static void OffsetMap_dealloc(OffsetMap *self)
{
    free_slots(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t OffsetMap_len(OffsetMap *self) { return self->size; }

static int get_key(PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "a key must be bytes, not %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    return 0;
}

static PyObject *OffsetMap_put(OffsetMap *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put(key, offset)");
        return NULL;
    }
    long long offset = PyLong_AsLongLong(args[1]);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (get_key(args[0], &view) < 0)
        return NULL;
    int ok = map_put(self, view.buf, view.len, offset);
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}

static PyObject *OffsetMap_get(OffsetMap *self, PyObject *key)
{
    Py_buffer view;
    if (get_key(key, &view) < 0)
        return NULL;
    int64_t found = map_get(self, view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(found);
}

static PyObject *OffsetMap_clear(OffsetMap *self, PyObject *unused)
{
    memset(self->slots, 0, self->nslots * sizeof(Slot));
    self->size = 0;
    Py_RETURN_NONE;
}

static PyObject *OffsetMap_capacity(OffsetMap *self, void *closure)
{
    return PyLong_FromSsize_t(self->max_entries);
}

static PyObject *OffsetMap_slots(OffsetMap *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->nslots);
}

static PyMethodDef OffsetMap_methods[] = {
    {"put", (PyCFunction)(void (*)(void))OffsetMap_put, METH_FASTCALL,
     "put(key, offset) -> bool: note key's offset (the larger is kept); False when the "
     "key is new and the map is full."},
    {"get", (PyCFunction)OffsetMap_get, METH_O, "get(key) -> the latest offset noted, or -1."},
    {"clear", (PyCFunction)OffsetMap_clear, METH_NOARGS, "Forget every key."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef OffsetMap_getset[] = {
    {"capacity", (getter)OffsetMap_capacity, NULL, "Most keys the map holds.", NULL},
    {"slots", (getter)OffsetMap_slots, NULL, "Slots (24 bytes each).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods OffsetMap_as_sequence = {.sq_length = (lenfunc)OffsetMap_len};

static PyTypeObject OffsetMapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvlog._compact.OffsetMap",
    .tp_basicsize = sizeof(OffsetMap),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "OffsetMap(slots, load_factor=0.9): key -> latest offset in 24 bytes a slot. "
              "Owned by one cleaner; not thread-safe.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)OffsetMap_init,
    .tp_dealloc = (destructor)OffsetMap_dealloc,
    .tp_methods = OffsetMap_methods,
    .tp_getset = OffsetMap_getset,
    .tp_as_sequence = &OffsetMap_as_sequence,
};

/* -- reading --------------------------------------------------------------------------- */

#define MALFORMED (-1)
#define UNSUPPORTED (-2)

typedef struct {
    const unsigned char *p, *end;
} cur;

static int fail(int code, const char *what)
{
    if (code == UNSUPPORTED)
        PyErr_Format(PyExc_NotImplementedError, "compaction walker: %s", what);
    else
        PyErr_Format(PyExc_ValueError, "malformed record batch payload: %s", what);
    return -1;
}

/* A CBOR item head: its major type (0-7) and argument, or MALFORMED / UNSUPPORTED. */
static inline int cbor_head(cur *c, uint64_t *arg)
{
    if (c->p >= c->end)
        return MALFORMED;
    unsigned char b = *c->p++;
    int major = b >> 5, info = b & 31;
    if (info < 24) {
        *arg = (uint64_t)info;
        return major;
    }
    int n = info == 24 ? 1 : info == 25 ? 2 : info == 26 ? 4 : info == 27 ? 8 : 0;
    if (n == 0)
        return info == 31 ? UNSUPPORTED : MALFORMED;
    if (c->end - c->p < n)
        return MALFORMED;
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | c->p[i];
    c->p += n;
    *arg = v;
    return major;
}

static int cbor_skip(cur *c, int depth)
{
    uint64_t arg;
    if (depth > 32)
        return UNSUPPORTED;
    int major = cbor_head(c, &arg);
    if (major < 0)
        return major;
    switch (major) {
    case 2:
    case 3:
        if (arg > (uint64_t)(c->end - c->p))
            return MALFORMED;
        c->p += arg;
        return 0;
    case 4:
    case 5:
        if (major == 5) {
            if (arg > (uint64_t)(c->end - c->p))
                return MALFORMED;
            arg *= 2;
        }
        if (arg > (uint64_t)(c->end - c->p))
            return MALFORMED; /* every item takes at least one byte */
        for (uint64_t i = 0; i < arg; i++) {
            int r = cbor_skip(c, depth + 1);
            if (r < 0)
                return r;
        }
        return 0;
    case 6:
        return cbor_skip(c, depth + 1);
    default:
        return 0; /* 0, 1, 7: the head was all of it */
    }
}

static inline int cbor_int(cur *c, int64_t *out)
{
    uint64_t arg;
    int major = cbor_head(c, &arg);
    if (major < 0)
        return major;
    if ((major != 0 && major != 1) || arg > (uint64_t)INT64_MAX)
        return MALFORMED;
    *out = major == 0 ? (int64_t)arg : -1 - (int64_t)arg;
    return 0;
}

/* The head of a column: an array of exactly n entries. */
static inline int cbor_array(cur *c, Py_ssize_t n)
{
    uint64_t arg;
    int major = cbor_head(c, &arg);
    if (major < 0)
        return major;
    if (major != 4 || arg != (uint64_t)n)
        return MALFORMED;
    return 0;
}

#define CBOR_NULL 0xf6

/* A key or value: a byte string (data, len) or null (len -1). */
static inline int cbor_blob(cur *c, const unsigned char **data, Py_ssize_t *len)
{
    if (c->p < c->end && *c->p == CBOR_NULL) {
        c->p++;
        *data = NULL;
        *len = -1;
        return 0;
    }
    uint64_t arg;
    int major = cbor_head(c, &arg);
    if (major < 0)
        return major;
    if (major != 2 || arg > (uint64_t)(c->end - c->p))
        return MALFORMED;
    *data = c->p;
    *len = (Py_ssize_t)arg;
    c->p += arg;
    return 0;
}

/* Zigzag varints of Kafka's records (see _kafka_records.c). */
static inline int read_varlong(cur *c, int64_t *out)
{
    uint64_t raw = 0;
    for (int shift = 0; shift <= 63; shift += 7) {
        if (c->p >= c->end)
            return MALFORMED;
        unsigned char b = *c->p++;
        raw |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = (int64_t)((raw >> 1) ^ (~(raw & 1) + 1));
            return 0;
        }
    }
    return MALFORMED;
}

/* -- parsed batches ----------------------------------------------------------------------- */

typedef struct {
    Py_ssize_t n;
    int ncols;
    int64_t *offsets;     /* offset deltas, n entries */
    int64_t *ts;          /* timestamp deltas, n entries */
    span ts_single;       /* the one timestamp item when the column is an int */
    span *ts_items;       /* raw items, when the column is an array */
    span *keys;           /* key data; len -1 for null */
    span *key_items;      /* raw items */
    span *value_items;    /* raw items; a null is the one byte 0xf6 */
    span *header_items;   /* raw items (5 columns only) */
} parsed;

static void parsed_free(parsed *b)
{
    PyMem_Free(b->offsets);
    PyMem_Free(b->ts);
    PyMem_Free(b->ts_items);
    PyMem_Free(b->keys);
    PyMem_Free(b->key_items);
    PyMem_Free(b->value_items);
    PyMem_Free(b->header_items);
    memset(b, 0, sizeof(*b));
}

static int parsed_alloc(parsed *b, Py_ssize_t n, int full)
{
    memset(b, 0, sizeof(*b));
    b->n = n;
    size_t m = n > 0 ? (size_t)n : 1;
    b->offsets = PyMem_Malloc(m * sizeof(int64_t));
    b->keys = PyMem_Malloc(m * sizeof(span));
    if (full) {
        b->ts = PyMem_Malloc(m * sizeof(int64_t));
        b->ts_items = PyMem_Malloc(m * sizeof(span));
        b->key_items = PyMem_Malloc(m * sizeof(span));
        b->value_items = PyMem_Malloc(m * sizeof(span));
        b->header_items = PyMem_Malloc(m * sizeof(span));
    }
    if (b->offsets == NULL || b->keys == NULL ||
        (full && (b->ts == NULL || b->ts_items == NULL || b->key_items == NULL ||
                  b->value_items == NULL || b->header_items == NULL))) {
        parsed_free(b);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Parse a native payload's columns. Without `full`, only offsets and keys (and the
 * values column is not read). Returns 0 or sets an exception and returns -1. */
static int parse_native(const unsigned char *buf, Py_ssize_t len, Py_ssize_t n, int full,
                        parsed *b)
{
    if (parsed_alloc(b, n, full) < 0)
        return -1;
    cur c = {buf, buf + len};
    uint64_t ncols;
    int r = cbor_head(&c, &ncols);
    if (r < 0)
        goto bad;
    if (r != 4 || (ncols != 4 && ncols != 5)) {
        r = MALFORMED;
        goto bad;
    }
    b->ncols = (int)ncols;
    /* offset deltas: null (consecutive) or n uints, strictly increasing */
    if (c.p < c.end && *c.p == CBOR_NULL) {
        c.p++;
        for (Py_ssize_t i = 0; i < n; i++)
            b->offsets[i] = i;
    } else {
        if ((r = cbor_array(&c, n)) < 0)
            goto bad;
        for (Py_ssize_t i = 0; i < n; i++) {
            if ((r = cbor_int(&c, &b->offsets[i])) < 0)
                goto bad;
            if (b->offsets[i] < 0 || (i && b->offsets[i] <= b->offsets[i - 1])) {
                r = MALFORMED;
                goto bad;
            }
        }
    }
    /* timestamp deltas: one int, or n ints */
    if (c.p < c.end && (*c.p >> 5) <= 1) {
        const unsigned char *start = c.p;
        int64_t v;
        if ((r = cbor_int(&c, &v)) < 0)
            goto bad;
        if (full) {
            b->ts_single.start = start;
            b->ts_single.len = c.p - start;
            for (Py_ssize_t i = 0; i < n; i++)
                b->ts[i] = v;
        }
    } else {
        if ((r = cbor_array(&c, n)) < 0)
            goto bad;
        for (Py_ssize_t i = 0; i < n; i++) {
            const unsigned char *start = c.p;
            int64_t v;
            if ((r = cbor_int(&c, &v)) < 0)
                goto bad;
            if (full) {
                b->ts[i] = v;
                b->ts_items[i].start = start;
                b->ts_items[i].len = c.p - start;
            }
        }
    }
    if ((r = cbor_array(&c, n)) < 0)
        goto bad;
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *start = c.p;
        if ((r = cbor_blob(&c, &b->keys[i].start, &b->keys[i].len)) < 0)
            goto bad;
        if (full) {
            b->key_items[i].start = start;
            b->key_items[i].len = c.p - start;
        }
    }
    if (!full)
        return 0;
    if ((r = cbor_array(&c, n)) < 0)
        goto bad;
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *start = c.p, *data;
        Py_ssize_t vlen;
        if ((r = cbor_blob(&c, &data, &vlen)) < 0)
            goto bad;
        b->value_items[i].start = start;
        b->value_items[i].len = c.p - start;
    }
    if (ncols == 5) {
        if ((r = cbor_array(&c, n)) < 0)
            goto bad;
        for (Py_ssize_t i = 0; i < n; i++) {
            const unsigned char *start = c.p;
            if ((r = cbor_skip(&c, 0)) < 0)
                goto bad;
            b->header_items[i].start = start;
            b->header_items[i].len = c.p - start;
        }
    }
    if (c.p != c.end) {
        r = MALFORMED;
        goto bad;
    }
    return 0;
bad:
    parsed_free(b);
    return fail(r, r == UNSUPPORTED ? "indefinite-length CBOR" : "columns do not parse");
}

/* Parse Kafka records: offsets, keys, and (full) timestamps, whole-record spans in
 * key_items and value null-ness in value_items[i].len (-1 for null). */
static int parse_kafka(const unsigned char *buf, Py_ssize_t len, Py_ssize_t n, int full,
                       parsed *b)
{
    if (parsed_alloc(b, n, full) < 0)
        return -1;
    cur c = {buf, buf + len};
    int r = MALFORMED;
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *start = c.p;
        int64_t length, ts, od, klen, vlen;
        if ((r = read_varlong(&c, &length)) < 0)
            goto bad;
        if (length < 1 || length > c.end - c.p) {
            r = MALFORMED;
            goto bad;
        }
        cur rec = {c.p + 1, c.p + length}; /* skip the record attributes */
        c.p += length;
        if ((r = read_varlong(&rec, &ts)) < 0 || (r = read_varlong(&rec, &od)) < 0 ||
            (r = read_varlong(&rec, &klen)) < 0)
            goto bad;
        if (od < 0 || od > INT32_MAX || (i && od <= b->offsets[i - 1]) || klen < -1 ||
            klen > rec.end - rec.p) {
            r = MALFORMED;
            goto bad;
        }
        b->offsets[i] = od;
        b->keys[i].start = klen < 0 ? NULL : rec.p;
        b->keys[i].len = klen;
        if (klen > 0)
            rec.p += klen;
        if (!full)
            continue;
        if ((r = read_varlong(&rec, &vlen)) < 0)
            goto bad;
        if (vlen < -1 || vlen > rec.end - rec.p) {
            r = MALFORMED;
            goto bad;
        }
        b->ts[i] = ts;
        b->key_items[i].start = start;
        b->key_items[i].len = c.p - start;
        b->value_items[i].start = NULL;
        b->value_items[i].len = vlen < 0 ? -1 : vlen;
    }
    if (c.p != c.end) {
        r = MALFORMED;
        goto bad;
    }
    return 0;
bad:
    parsed_free(b);
    return fail(r, "Kafka records do not parse");
}

/* -- filling the map ------------------------------------------------------------------- */

/* Note every keyed record at or past min_offset; returns the offset of the first record
 * that did not fit (the map is full), or -1 when every one did. */
static PyObject *fill(PyObject *const *args, Py_ssize_t nargs, int kafka)
{
    OffsetMap *m;
    Py_buffer view;
    Py_ssize_t n;
    long long base, min_offset;
    if (nargs != 5 || !PyObject_TypeCheck(args[0], &OffsetMapType)) {
        PyErr_SetString(PyExc_TypeError, "put_*(offset_map, records, count, base_offset, min_offset)");
        return NULL;
    }
    m = (OffsetMap *)args[0];
    n = PyLong_AsSsize_t(args[2]);
    base = PyLong_AsLongLong(args[3]);
    min_offset = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative record count");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    parsed b;
    int r = kafka ? parse_kafka(view.buf, view.len, n, 0, &b) : parse_native(view.buf, view.len, n, 0, &b);
    if (r < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    long long stopped = -1;
    uint64_t *h = NULL;
    if (hash_keys(m, b.keys, n, &h) < 0) {
        parsed_free(&b);
        PyBuffer_Release(&view);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t offset = base + b.offsets[i];
        if (offset < min_offset || b.keys[i].len < 0)
            continue;
        if (!map_put_hashed(m, h[2 * i], h[2 * i + 1], offset)) {
            stopped = offset;
            break;
        }
    }
    PyMem_Free(h);
    parsed_free(&b);
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(stopped);
}

static PyObject *put_native(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return fill(args, nargs, 0);
}

static PyObject *put_kafka(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return fill(args, nargs, 1);
}

/* -- filtering ----------------------------------------------------------------------- */

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} writer;

static inline void put_bytes(writer *w, const void *data, Py_ssize_t n)
{
    memcpy(w->buf + w->len, data, n);
    w->len += n;
}

static inline void put_span(writer *w, span s) { put_bytes(w, s.start, s.len); }

/* A CBOR head in its shortest form. Caller reserved 9 bytes. */
static inline void put_head(writer *w, int major, uint64_t arg)
{
    unsigned char *p = (unsigned char *)w->buf + w->len;
    unsigned char m = (unsigned char)(major << 5);
    if (arg < 24) {
        p[0] = m | (unsigned char)arg;
        w->len += 1;
    } else if (arg <= 0xff) {
        p[0] = m | 24;
        p[1] = (unsigned char)arg;
        w->len += 2;
    } else if (arg <= 0xffff) {
        p[0] = m | 25;
        p[1] = (unsigned char)(arg >> 8);
        p[2] = (unsigned char)arg;
        w->len += 3;
    } else if (arg <= 0xffffffffULL) {
        p[0] = m | 26;
        for (int i = 0; i < 4; i++)
            p[1 + i] = (unsigned char)(arg >> (24 - 8 * i));
        w->len += 5;
    } else {
        p[0] = m | 27;
        for (int i = 0; i < 8; i++)
            p[1 + i] = (unsigned char)(arg >> (56 - 8 * i));
        w->len += 9;
    }
}

/* filter_*(offset_map, records, count, base_offset, map_end, tombstone_horizon) ->
 *     (kept, new_records | None, max_kept_ts_delta, first_kept_tombstone, tombstones_removed,
 *      keyless_removed)
 *
 * A record at offset o with key k is kept when o >= map_end (past what the map covers);
 * else it goes when it has no key (a compacted topic's records need one), when the map
 * holds a later offset for k (superseded), or when it is a tombstone (null value) below
 * tombstone_horizon (its delete.retention.ms has run out). new_records is None when
 * every record or none is kept. max_kept_ts_delta is 0 and first_kept_tombstone -1 when
 * there is no such record. */
static PyObject *filter(PyObject *const *args, Py_ssize_t nargs, int kafka)
{
    if (nargs != 6 || !PyObject_TypeCheck(args[0], &OffsetMapType)) {
        PyErr_SetString(PyExc_TypeError,
                        "filter_*(offset_map, records, count, base_offset, map_end, horizon)");
        return NULL;
    }
    OffsetMap *m = (OffsetMap *)args[0];
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    long long base = PyLong_AsLongLong(args[3]);
    long long map_end = PyLong_AsLongLong(args[4]);
    long long horizon = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative record count");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    parsed b;
    int r = kafka ? parse_kafka(view.buf, view.len, n, 1, &b) : parse_native(view.buf, view.len, n, 1, &b);
    if (r < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    PyObject *result = NULL, *payload = NULL;
    uint64_t *h = NULL;
    char *keep = PyMem_Malloc(n > 0 ? (size_t)n : 1);
    if (keep == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (hash_keys(m, b.keys, n, &h) < 0)
        goto done;
    Py_ssize_t kept = 0;
    long long tombstones_removed = 0, keyless_removed = 0, first_tombstone = -1;
    int64_t max_ts = 0;
    int any_ts = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t offset = base + b.offsets[i];
        int tombstone = kafka ? b.value_items[i].len < 0
                              : (b.value_items[i].len == 1 && *b.value_items[i].start == CBOR_NULL);
        int k = 1;
        if (offset < map_end) {
            if (b.keys[i].len < 0) {
                k = 0;
                keyless_removed++;
            } else if (map_get_hashed(m, h[2 * i], h[2 * i + 1]) > offset) {
                k = 0;
            } else if (tombstone && offset < horizon) {
                k = 0;
                tombstones_removed++;
            }
        }
        keep[i] = (char)k;
        if (k) {
            kept++;
            if (!any_ts || b.ts[i] > max_ts)
                max_ts = b.ts[i];
            any_ts = 1;
            if (tombstone && first_tombstone < 0)
                first_tombstone = offset;
        }
    }
    if (kept > 0 && kept < n) {
        writer w = {NULL, 0, 0};
        /* Kept items are copied; new heads take at most 9 bytes each, and the offset
         * column at most 9 bytes per record. */
        w.cap = view.len + 9 * (kept + 8);
        payload = PyBytes_FromStringAndSize(NULL, w.cap);
        if (payload == NULL)
            goto done;
        w.buf = PyBytes_AS_STRING(payload);
        if (kafka) {
            for (Py_ssize_t i = 0; i < n; i++)
                if (keep[i])
                    put_span(&w, b.key_items[i]);
        } else {
            put_head(&w, 4, (uint64_t)b.ncols);
            put_head(&w, 4, (uint64_t)kept);
            for (Py_ssize_t i = 0; i < n; i++)
                if (keep[i])
                    put_head(&w, 0, (uint64_t)b.offsets[i]);
            if (b.ts_single.start != NULL) {
                put_span(&w, b.ts_single);
            } else {
                put_head(&w, 4, (uint64_t)kept);
                for (Py_ssize_t i = 0; i < n; i++)
                    if (keep[i])
                        put_span(&w, b.ts_items[i]);
            }
            span *columns[3] = {b.key_items, b.value_items, b.header_items};
            for (int col = 0; col < b.ncols - 2; col++) {
                put_head(&w, 4, (uint64_t)kept);
                for (Py_ssize_t i = 0; i < n; i++)
                    if (keep[i])
                        put_span(&w, columns[col][i]);
            }
        }
        if (_PyBytes_Resize(&payload, w.len) < 0)
            goto done;
    }
    result = Py_BuildValue("(nOLLLL)", kept, payload ? payload : Py_None, (long long)max_ts,
                           first_tombstone, tombstones_removed, keyless_removed);
done:
    Py_XDECREF(payload);
    PyMem_Free(h);
    PyMem_Free(keep);
    parsed_free(&b);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *filter_native(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return filter(args, nargs, 0);
}

static PyObject *filter_kafka(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return filter(args, nargs, 1);
}

/* -- records without a key ---------------------------------------------------------------- */

/* The offset delta of the first record without a key, or -1: a compacted topic refuses
 * such a batch at produce, as Kafka does (the cleaner would only drop the record later). */
static PyObject *first_keyless(PyObject *const *args, Py_ssize_t nargs, int kafka)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "first_keyless_*(records, count)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative record count");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    parsed b;
    int r = kafka ? parse_kafka(view.buf, view.len, n, 0, &b) : parse_native(view.buf, view.len, n, 0, &b);
    PyBuffer_Release(&view);
    if (r < 0)
        return NULL;
    long long found = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (b.keys[i].len < 0) {
            found = b.offsets[i];
            break;
        }
    }
    parsed_free(&b);
    return PyLong_FromLongLong(found);
}

static PyObject *first_keyless_native(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return first_keyless(args, nargs, 0);
}

static PyObject *first_keyless_kafka(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return first_keyless(args, nargs, 1);
}

static PyObject *hash128(PyObject *self, PyObject *key)
{
    Py_buffer view;
    if (get_key(key, &view) < 0)
        return NULL;
    uint64_t h1, h2;
    murmur3_128(view.buf, view.len, &h1, &h2);
    PyBuffer_Release(&view);
    return Py_BuildValue("(KK)", (unsigned long long)h1, (unsigned long long)h2);
}

static PyMethodDef methods[] = {
    {"put_native", (PyCFunction)(void (*)(void))put_native, METH_FASTCALL,
     "put_native(offset_map, payload, count, base_offset, min_offset) -> int: note the keys "
     "of a native batch's (decompressed) payload; the offset where the map filled, or -1."},
    {"put_kafka", (PyCFunction)(void (*)(void))put_kafka, METH_FASTCALL,
     "put_kafka(offset_map, records, count, base_offset, min_offset) -> int: the same for a "
     "Kafka batch's (decompressed) records section."},
    {"filter_native", (PyCFunction)(void (*)(void))filter_native, METH_FASTCALL,
     "filter_native(offset_map, payload, count, base_offset, map_end, tombstone_horizon) -> "
     "(kept, payload|None, max_ts_delta, first_tombstone, tombstones_removed, keyless_removed)"},
    {"filter_kafka", (PyCFunction)(void (*)(void))filter_kafka, METH_FASTCALL,
     "filter_kafka(...): filter_native for a Kafka batch's records section."},
    {"hash128", (PyCFunction)hash128, METH_O, "hash128(key) -> (h1, h2): the map's hash."},
    {"first_keyless_native", (PyCFunction)(void (*)(void))first_keyless_native, METH_FASTCALL,
     "first_keyless_native(payload, count) -> offset delta of the first keyless record, or -1"},
    {"first_keyless_kafka", (PyCFunction)(void (*)(void))first_keyless_kafka, METH_FASTCALL,
     "first_keyless_kafka(records, count) -> offset delta of the first keyless record, or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kvlog._compact",
    "Log compaction's per-record work: the offset map and batch filters.", -1, methods,
};

PyMODINIT_FUNC PyInit__compact(void)
{
    if (PyType_Ready(&OffsetMapType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    Py_INCREF(&OffsetMapType);
    if (PyModule_AddObject(mod, "OffsetMap", (PyObject *)&OffsetMapType) < 0) {
        Py_DECREF(&OffsetMapType);
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
