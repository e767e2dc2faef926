/* The per-record half of Kafka RecordBatch v2 <-> kvlog columns, in C.
 *
 * A Kafka batch's records section (after decompression) is `record_count` records:
 *
 *   length varint | attributes int8 | timestampDelta varlong | offsetDelta varint |
 *   keyLength varint | key | valueLength varint | value |
 *   headerCount varint | (headerKeyLength varint | headerKey | headerValueLength varint |
 *   headerValue) * headerCount
 *
 * where every varint/varlong is zigzag-encoded (Kafka's ByteUtils) and a length of -1
 * means null. The batch header, CRC and compression are handled once per batch in
 * kafka_batch.py; only the loop over records lives here. The pure-Python twin is
 * kvlog/_kafka_records_py.py; tests check that both agree with kafka-python's records.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Smallest possible record: length, attributes, timestamp, offset, key -1, value -1,
 * header count: one byte each. Bounds a count read from a (possibly corrupt) header. */
#define MIN_RECORD_BYTES 7

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} reader;

static int corrupt(const char *what)
{
    PyErr_Format(PyExc_ValueError, "malformed Kafka record: %s", what);
    return -1;
}

/* Zigzag varlong of at most 10 bytes. */
static int read_varlong(reader *r, int64_t *out)
{
    uint64_t raw = 0;
    int shift = 0;
    while (r->p < r->end) {
        unsigned char b = *r->p++;
        if (shift == 63 && (b & 0x7e))
            return corrupt("varlong overflows 64 bits");
        raw |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = (int64_t)((raw >> 1) ^ (~(raw & 1) + 1));
            return 0;
        }
        shift += 7;
        if (shift > 63)
            return corrupt("varlong longer than 10 bytes");
    }
    return corrupt("truncated varint");
}

/* Zigzag varint (int32) of at most 5 bytes. */
static int read_varint(reader *r, int32_t *out)
{
    uint32_t raw = 0;
    int shift = 0;
    while (r->p < r->end) {
        unsigned char b = *r->p++;
        if (shift == 28 && (b & 0x70))
            return corrupt("varint overflows 32 bits");
        raw |= (uint32_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = (int32_t)((raw >> 1) ^ (~(raw & 1) + 1));
            return 0;
        }
        shift += 7;
        if (shift > 28)
            return corrupt("varint longer than 5 bytes");
    }
    return corrupt("truncated varint");
}

/* A nullable byte string: bytes, or None for length -1. New reference or NULL. */
static PyObject *read_bytes(reader *r, const char *what)
{
    int32_t n;
    if (read_varint(r, &n) < 0)
        return NULL;
    if (n == -1)
        Py_RETURN_NONE;
    if (n < 0 || n > r->end - r->p) {
        PyErr_Format(PyExc_ValueError, "malformed Kafka record: %s length %d with %zd bytes left",
                     what, (int)n, (Py_ssize_t)(r->end - r->p));
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize((const char *)r->p, n);
    r->p += n;
    return out;
}

/* One header: [name (str), value (bytes or None)]. Names are UTF-8; bytes that are not
 * decode with surrogateescape, so converting back gives the same bytes. */
static PyObject *read_header(reader *r)
{
    int32_t n;
    if (read_varint(r, &n) < 0)
        return NULL;
    if (n < 0 || n > r->end - r->p) {
        corrupt("header key length out of range");
        return NULL;
    }
    PyObject *name = PyUnicode_DecodeUTF8((const char *)r->p, n, "surrogateescape");
    if (name == NULL)
        return NULL;
    r->p += n;
    PyObject *value = read_bytes(r, "header value");
    if (value == NULL) {
        Py_DECREF(name);
        return NULL;
    }
    PyObject *pair = PyList_New(2);
    if (pair == NULL) {
        Py_DECREF(name);
        Py_DECREF(value);
        return NULL;
    }
    PyList_SET_ITEM(pair, 0, name);
    PyList_SET_ITEM(pair, 1, value);
    return pair;
}

/* decode_records(records, count) ->
 *     (offset_deltas | None, timestamp_deltas, keys, values, headers | None)
 * offset_deltas is None when record i has offset delta i (the usual case); headers is
 * None when no record has any. Raises ValueError on malformed input. */
static PyObject *decode_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "decode_records(records, count)");
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[1]);
    if (count == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL, *offsets = NULL, *ts = NULL, *keys = NULL, *values = NULL;
    PyObject *headers = NULL;
    if (count < 0 || count > view.len / MIN_RECORD_BYTES) {
        PyErr_Format(PyExc_ValueError,
                     "malformed Kafka record batch: %zd records cannot fit in %zd bytes",
                     count, view.len);
        goto done;
    }
    ts = PyList_New(count);
    keys = PyList_New(count);
    values = PyList_New(count);
    if (ts == NULL || keys == NULL || values == NULL)
        goto done;
    reader r = {(const unsigned char *)view.buf, (const unsigned char *)view.buf + view.len};
    for (Py_ssize_t i = 0; i < count; i++) {
        int32_t length, offset_delta, header_count;
        int64_t ts_delta;
        if (read_varint(&r, &length) < 0)
            goto done;
        if (length < 0 || length > r.end - r.p) {
            corrupt("record length out of range");
            goto done;
        }
        reader rec = {r.p, r.p + length};
        r.p += length;
        if (rec.p >= rec.end) {
            corrupt("record has no attributes");
            goto done;
        }
        rec.p++; /* record attributes: unused by Kafka */
        if (read_varlong(&rec, &ts_delta) < 0 || read_varint(&rec, &offset_delta) < 0)
            goto done;
        PyObject *t = PyLong_FromLongLong(ts_delta);
        if (t == NULL)
            goto done;
        PyList_SET_ITEM(ts, i, t);
        if (offsets == NULL && offset_delta != i) {
            /* The first out-of-sequence delta: materialize 0..i-1. */
            offsets = PyList_New(count);
            if (offsets == NULL)
                goto done;
            for (Py_ssize_t j = 0; j < i; j++) {
                PyObject *o = PyLong_FromSsize_t(j);
                if (o == NULL)
                    goto done;
                PyList_SET_ITEM(offsets, j, o);
            }
        }
        if (offsets != NULL) {
            PyObject *o = PyLong_FromLong(offset_delta);
            if (o == NULL)
                goto done;
            PyList_SET_ITEM(offsets, i, o);
        }
        PyObject *k = read_bytes(&rec, "key");
        if (k == NULL)
            goto done;
        PyList_SET_ITEM(keys, i, k);
        PyObject *v = read_bytes(&rec, "value");
        if (v == NULL)
            goto done;
        PyList_SET_ITEM(values, i, v);
        if (read_varint(&rec, &header_count) < 0)
            goto done;
        if (header_count < 0 || header_count > (rec.end - rec.p) / 2) {
            corrupt("header count out of range");
            goto done;
        }
        if (header_count > 0 && headers == NULL) {
            headers = PyList_New(count);
            if (headers == NULL)
                goto done;
            for (Py_ssize_t j = 0; j < i; j++) {
                Py_INCREF(Py_None);
                PyList_SET_ITEM(headers, j, Py_None);
            }
        }
        if (headers != NULL && header_count == 0) {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(headers, i, Py_None);
        } else if (headers != NULL) {
            PyObject *pairs = PyList_New(header_count);
            if (pairs == NULL)
                goto done;
            PyList_SET_ITEM(headers, i, pairs);
            for (int32_t h = 0; h < header_count; h++) {
                PyObject *pair = read_header(&rec);
                if (pair == NULL)
                    goto done;
                PyList_SET_ITEM(pairs, h, pair);
            }
        }
        if (rec.p != rec.end) {
            PyErr_Format(PyExc_ValueError,
                         "malformed Kafka record: %zd bytes left over inside record %zd",
                         (Py_ssize_t)(rec.end - rec.p), i);
            goto done;
        }
    }
    if (r.p != r.end) {
        PyErr_Format(PyExc_ValueError,
                     "malformed Kafka record batch: %zd bytes after its %zd records",
                     (Py_ssize_t)(r.end - r.p), count);
        goto done;
    }
    result = PyTuple_Pack(5, offsets ? offsets : Py_None, ts, keys, values,
                          headers ? headers : Py_None);
done:
    PyBuffer_Release(&view);
    Py_XDECREF(offsets);
    Py_XDECREF(ts);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    Py_XDECREF(headers);
    return result;
}

/* -- encoding --------------------------------------------------------------------------- */

typedef struct {
    char *buf;
    Py_ssize_t len;
    Py_ssize_t cap;
} writer;

static int reserve(writer *w, Py_ssize_t n)
{
    if (w->len + n <= w->cap)
        return 0;
    Py_ssize_t cap = w->cap ? w->cap : 4096;
    while (cap < w->len + n) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *grown = PyMem_Realloc(w->buf, cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->buf = grown;
    w->cap = cap;
    return 0;
}

static Py_ssize_t varlong_size(int64_t v)
{
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    Py_ssize_t n = 1;
    while (z >= 0x80) {
        z >>= 7;
        n++;
    }
    return n;
}

/* Caller reserved 10 bytes. */
static void put_varlong(writer *w, int64_t v)
{
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    unsigned char *p = (unsigned char *)w->buf + w->len;
    while (z >= 0x80) {
        *p++ = (unsigned char)(z | 0x80);
        z >>= 7;
    }
    *p++ = (unsigned char)z;
    w->len = (char *)p - w->buf;
}

/* A key, value or header value: a bytes-like object or None. `view->obj` is NULL for None
 * and for bytes (no buffer to release). */
typedef struct {
    const char *data;
    Py_ssize_t len; /* -1 for None */
    Py_buffer view;
} blob;

static int get_blob(PyObject *obj, blob *b, const char *what)
{
    b->view.obj = NULL;
    if (obj == Py_None) {
        b->data = NULL;
        b->len = -1;
        return 0;
    }
    if (PyBytes_Check(obj)) {
        b->data = PyBytes_AS_STRING(obj);
        b->len = PyBytes_GET_SIZE(obj);
        return 0;
    }
    if (PyObject_GetBuffer(obj, &b->view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "record %s must be bytes or None, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    b->data = b->view.buf;
    b->len = b->view.len;
    if (b->len > INT32_MAX) {
        PyBuffer_Release(&b->view);
        PyErr_Format(PyExc_ValueError, "record %s longer than 2 GiB", what);
        return -1;
    }
    return 0;
}

static void release_blob(blob *b)
{
    if (b->view.obj != NULL)
        PyBuffer_Release(&b->view);
}

static Py_ssize_t blob_size(const blob *b)
{
    return b->len < 0 ? 1 : varlong_size(b->len) + b->len;
}

static void put_blob(writer *w, const blob *b)
{
    put_varlong(w, b->len);
    if (b->len > 0) {
        memcpy(w->buf + w->len, b->data, b->len);
        w->len += b->len;
    }
}

/* A header name as UTF-8; names holding surrogates (from surrogateescape) encode back
 * to their original bytes through `*keep`, which the caller releases. */
static int get_name(PyObject *name, const char **data, Py_ssize_t *len, PyObject **keep)
{
    *keep = NULL;
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "header name must be str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return -1;
    }
    *data = PyUnicode_AsUTF8AndSize(name, len);
    if (*data != NULL)
        return 0;
    PyErr_Clear();
    *keep = PyUnicode_AsEncodedString(name, "utf-8", "surrogateescape");
    if (*keep == NULL)
        return -1;
    *data = PyBytes_AS_STRING(*keep);
    *len = PyBytes_GET_SIZE(*keep);
    return 0;
}

/* The headers of one record: None, or a sequence of (name, value) pairs. Writes them
 * when `w` is not NULL, else adds their encoded size to *size. */
static int headers_pass(PyObject *pairs, writer *w, Py_ssize_t *size)
{
    PyObject *seq = PySequence_Fast(pairs, "record headers must be a sequence of pairs");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    if (w != NULL)
        put_varlong(w, n);
    else
        *size += varlong_size(n);
    for (Py_ssize_t h = 0; h < n; h++) {
        PyObject *pair = PySequence_Fast(items[h], "a record header must be a (name, value) pair");
        if (pair == NULL)
            goto fail;
        if (PySequence_Fast_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_ValueError, "a record header must be a (name, value) pair");
            goto fail;
        }
        const char *name;
        Py_ssize_t name_len;
        PyObject *keep;
        blob value;
        if (get_name(PySequence_Fast_GET_ITEM(pair, 0), &name, &name_len, &keep) < 0) {
            Py_DECREF(pair);
            goto fail;
        }
        if (get_blob(PySequence_Fast_GET_ITEM(pair, 1), &value, "header value") < 0) {
            Py_XDECREF(keep);
            Py_DECREF(pair);
            goto fail;
        }
        if (w != NULL) {
            if (reserve(w, 20 + name_len + (value.len > 0 ? value.len : 0)) < 0) {
                release_blob(&value);
                Py_XDECREF(keep);
                Py_DECREF(pair);
                goto fail;
            }
            put_varlong(w, name_len);
            memcpy(w->buf + w->len, name, name_len);
            w->len += name_len;
            put_blob(w, &value);
        } else {
            *size += varlong_size(name_len) + name_len + blob_size(&value);
        }
        release_blob(&value);
        Py_XDECREF(keep);
        Py_DECREF(pair);
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

static int get_int64(PyObject *obj, int64_t *out, const char *what)
{
    long long v = PyLong_AsLongLong(obj);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "record %s must be an int", what);
        return -1;
    }
    *out = v;
    return 0;
}

/* encode_records(offset_deltas | None, timestamp_deltas | int, keys, values, headers | None)
 *     -> bytes: the uncompressed records section of a Kafka RecordBatch v2. */
static PyObject *encode_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_records(offset_deltas, timestamp_deltas, keys, values, headers)");
        return NULL;
    }
    PyObject *offsets = NULL, *ts = NULL, *keys = NULL, *values = NULL, *headers = NULL;
    PyObject *result = NULL;
    writer w = {NULL, 0, 0};
    int64_t same_ts = 0;
    int ts_is_int = PyLong_Check(args[1]);
    if (ts_is_int && get_int64(args[1], &same_ts, "timestamp delta") < 0)
        return NULL;
    values = PySequence_Fast(args[3], "values must be a sequence");
    if (values == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(values);
    keys = PySequence_Fast(args[2], "keys must be a sequence");
    if (keys == NULL)
        goto done;
    if (!ts_is_int && (ts = PySequence_Fast(args[1], "timestamp deltas must be a sequence")) == NULL)
        goto done;
    if (args[0] != Py_None &&
        (offsets = PySequence_Fast(args[0], "offset deltas must be a sequence")) == NULL)
        goto done;
    if (args[4] != Py_None &&
        (headers = PySequence_Fast(args[4], "headers must be a sequence")) == NULL)
        goto done;
    if (PySequence_Fast_GET_SIZE(keys) != n || (ts && PySequence_Fast_GET_SIZE(ts) != n) ||
        (offsets && PySequence_Fast_GET_SIZE(offsets) != n) ||
        (headers && PySequence_Fast_GET_SIZE(headers) != n)) {
        PyErr_SetString(PyExc_ValueError, "record columns differ in length");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t ts_delta = same_ts, offset_delta = i;
        if (ts && get_int64(PySequence_Fast_GET_ITEM(ts, i), &ts_delta, "timestamp delta") < 0)
            goto done;
        if (offsets &&
            get_int64(PySequence_Fast_GET_ITEM(offsets, i), &offset_delta, "offset delta") < 0)
            goto done;
        if (offset_delta < INT32_MIN || offset_delta > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "record offset delta out of int32 range");
            goto done;
        }
        PyObject *pairs = headers ? PySequence_Fast_GET_ITEM(headers, i) : Py_None;
        blob key, value;
        if (get_blob(PySequence_Fast_GET_ITEM(keys, i), &key, "key") < 0)
            goto done;
        if (get_blob(PySequence_Fast_GET_ITEM(values, i), &value, "value") < 0) {
            release_blob(&key);
            goto done;
        }
        Py_ssize_t body = 1 + varlong_size(ts_delta) + varlong_size(offset_delta) +
                          blob_size(&key) + blob_size(&value);
        int ok = 0;
        if (pairs == Py_None)
            body += 1;
        else
            ok = headers_pass(pairs, NULL, &body);
        if (ok == 0)
            ok = reserve(&w, 10 + body);
        if (ok == 0) {
            put_varlong(&w, body);
            Py_ssize_t body_start = w.len;
            w.buf[w.len++] = 0; /* record attributes */
            put_varlong(&w, ts_delta);
            put_varlong(&w, offset_delta);
            put_blob(&w, &key);
            put_blob(&w, &value);
            if (pairs == Py_None)
                w.buf[w.len++] = 0;
            else
                ok = headers_pass(pairs, &w, NULL);
            if (ok == 0 && w.len - body_start != body) {
                PyErr_SetString(PyExc_SystemError, "record size computed wrongly");
                ok = -1;
            }
        }
        release_blob(&key);
        release_blob(&value);
        if (ok < 0)
            goto done;
    }
    result = PyBytes_FromStringAndSize(w.buf ? w.buf : "", w.len);
done:
    PyMem_Free(w.buf);
    Py_XDECREF(offsets);
    Py_XDECREF(ts);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    Py_XDECREF(headers);
    return result;
}

static PyMethodDef methods[] = {
    {"decode_records", (PyCFunction)(void (*)(void))decode_records, METH_FASTCALL,
     "decode_records(records, count) -> (offset_deltas|None, timestamp_deltas, keys, values, "
     "headers|None): the records section of a Kafka RecordBatch v2 as columns."},
    {"encode_records", (PyCFunction)(void (*)(void))encode_records, METH_FASTCALL,
     "encode_records(offset_deltas|None, timestamp_deltas|int, keys, values, headers|None) -> "
     "bytes: columns as the records section of a Kafka RecordBatch v2."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kvlog._kafka_records",
    "Kafka RecordBatch v2 records <-> columns (per-record work in C).", -1, methods,
};

PyMODINIT_FUNC PyInit__kafka_records(void)
{
    return PyModule_Create(&module);
}
