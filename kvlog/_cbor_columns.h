/* kvlog's native batch payload (kvlog/batch.py) is one CBOR array of columns:
 *
 *   [offset_deltas (null), timestamp_deltas (int or array of ints), keys, values(, headers)]
 *
 * with definite lengths and the shortest head for every number, as cbor2 writes them. The
 * producer's accumulator (_acc_batch.c) writes each column as records arrive; the
 * consumer's reader (_records.c) finds each record's key and value in place. Only that
 * canonical shape is read here: anything else goes to cbor2 (kvlog/batch.py).
 */
#ifndef KVLOG_CBOR_COLUMNS_H
#define KVLOG_CBOR_COLUMNS_H
#include <stdint.h>
#include <string.h>

#define CBOR_UINT 0
#define CBOR_NEGINT 1
#define CBOR_BYTES 2
#define CBOR_TEXT 3
#define CBOR_ARRAY 4
#define CBOR_NULL 0xf6

/* A growable byte buffer (one column of an open batch). */
typedef struct {
    unsigned char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} cbor_buf;

static inline int cbor_reserve(cbor_buf *b, Py_ssize_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 512;
    while (cap < b->len + extra)
        cap *= 2;
    unsigned char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline void cbor_free(cbor_buf *b)
{
    PyMem_Free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* Bytes of the head of an item whose argument is v. */
static inline Py_ssize_t cbor_head_size(uint64_t v)
{
    return v < 24 ? 1 : v <= 0xff ? 2 : v <= 0xffff ? 3 : v <= 0xffffffffu ? 5 : 9;
}

/* Write a head at p (room for cbor_head_size(v) bytes); returns the end. */
static inline unsigned char *cbor_put_head(unsigned char *p, int major, uint64_t v)
{
    unsigned char m = (unsigned char)(major << 5);
    if (v < 24) {
        *p++ = m | (unsigned char)v;
    } else if (v <= 0xff) {
        *p++ = m | 24;
        *p++ = (unsigned char)v;
    } else if (v <= 0xffff) {
        *p++ = m | 25;
        *p++ = (unsigned char)(v >> 8);
        *p++ = (unsigned char)v;
    } else if (v <= 0xffffffffu) {
        *p++ = m | 26;
        for (int s = 24; s >= 0; s -= 8)
            *p++ = (unsigned char)(v >> s);
    } else {
        *p++ = m | 27;
        for (int s = 56; s >= 0; s -= 8)
            *p++ = (unsigned char)(v >> s);
    }
    return p;
}

static inline unsigned char *cbor_put_int(unsigned char *p, int64_t x)
{
    if (x >= 0)
        return cbor_put_head(p, CBOR_UINT, (uint64_t)x);
    return cbor_put_head(p, CBOR_NEGINT, (uint64_t)(-(x + 1)));
}

/* A byte string, or null for len < 0. Room: 9 + len. */
static inline unsigned char *cbor_put_bytes(unsigned char *p, const char *data, Py_ssize_t len)
{
    if (len < 0) {
        *p++ = CBOR_NULL;
        return p;
    }
    p = cbor_put_head(p, CBOR_BYTES, (uint64_t)len);
    memcpy(p, data, (size_t)len);
    return p + len;
}

/* -- reading ---------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} cbor_reader;

/* Read a head: its major type and argument. -1 when the input is not a definite-length
 * head this reader takes (indefinite lengths, simple values other than null, floats,
 * truncation); then the caller falls back to cbor2. Null comes back as major 7, arg 22. */
static inline int cbor_get_head(cbor_reader *r, int *major, uint64_t *arg)
{
    if (r->p >= r->end)
        return -1;
    unsigned char ib = *r->p++;
    int info = ib & 0x1f;
    *major = ib >> 5;
    if (*major == 7)
        return ib == CBOR_NULL ? (*arg = 22, 0) : -1;
    if (info < 24) {
        *arg = (uint64_t)info;
        return 0;
    }
    int n = info == 24 ? 1 : info == 25 ? 2 : info == 26 ? 4 : info == 27 ? 8 : 0;
    if (n == 0 || r->end - r->p < n)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | r->p[i];
    r->p += n;
    *arg = v;
    return 0;
}

#endif
