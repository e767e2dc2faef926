/* The consumer's per-record path in C (module kvlog._records): a native batch's payload
 * read in place, and ConsumerRecords built from it for the records poll() returns.
 *
 * parse(payload, count) indexes the canonical payload kvlog producers write
 * (_cbor_columns.h: consecutive offsets, no headers column) and returns a Columns view,
 * or None for any other shape: then ipc/records.py decodes the payload with cbor2, as
 * before. A view keeps the payload and, per record, where its key and value are; keys
 * and values become bytes objects only for the records handed out. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "_cbor_columns.h"

static PyTypeObject *record_type = NULL; /* ipc.records.ConsumerRecord */
static PyObject *no_headers = NULL;      /* its shared empty headers value */

typedef struct {
    PyObject_HEAD
    PyObject *payload; /* bytes-like object the positions point into */
    Py_buffer view;
    Py_ssize_t count;
    int64_t *ts;       /* per record, or NULL when they share `ts_all` */
    int64_t ts_all;
    Py_ssize_t *key_at; /* offset of the key's bytes, or -1 for null */
    Py_ssize_t *key_len;
    Py_ssize_t *value_at;
    Py_ssize_t *value_len;
} columns_obj;

static void columns_dealloc(columns_obj *c)
{
    if (c->payload != NULL)
        PyBuffer_Release(&c->view);
    Py_XDECREF(c->payload);
    PyMem_Free(c->ts);
    PyMem_Free(c->key_at);
    PyMem_Free(c->key_len);
    PyMem_Free(c->value_at);
    PyMem_Free(c->value_len);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyTypeObject ColumnsType;

/* A column of byte strings (or nulls): n entries, their positions filled in. */
static int read_bytes_column(cbor_reader *r, const unsigned char *base, Py_ssize_t n,
                             Py_ssize_t *at, Py_ssize_t *len)
{
    int major;
    uint64_t arg;
    if (cbor_get_head(r, &major, &arg) < 0 || major != CBOR_ARRAY || arg != (uint64_t)n)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (cbor_get_head(r, &major, &arg) < 0)
            return -1;
        if (major == 7) { /* null */
            at[i] = -1;
            len[i] = 0;
            continue;
        }
        if (major != CBOR_BYTES || arg > (uint64_t)(r->end - r->p))
            return -1;
        at[i] = r->p - base;
        len[i] = (Py_ssize_t)arg;
        r->p += arg;
    }
    return 0;
}

static int read_int(cbor_reader *r, int64_t *out)
{
    int major;
    uint64_t arg;
    if (cbor_get_head(r, &major, &arg) < 0 || arg > INT64_MAX)
        return -1;
    if (major == CBOR_UINT)
        *out = (int64_t)arg;
    else if (major == CBOR_NEGINT)
        *out = -1 - (int64_t)arg;
    else
        return -1;
    return 0;
}

static PyObject *parse(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse(payload, count)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    columns_obj *c = PyObject_New(columns_obj, &ColumnsType);
    if (c == NULL)
        return NULL;
    memset((char *)c + sizeof(PyObject), 0, sizeof(columns_obj) - sizeof(PyObject));
    if (PyObject_GetBuffer(args[0], &c->view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(c);
        return NULL;
    }
    Py_INCREF(args[0]);
    c->payload = args[0];
    c->count = n;
    if (n <= 0 || n > c->view.len) /* a record takes at least two bytes */
        goto other;
    c->key_at = PyMem_Malloc(n * sizeof(Py_ssize_t));
    c->key_len = PyMem_Malloc(n * sizeof(Py_ssize_t));
    c->value_at = PyMem_Malloc(n * sizeof(Py_ssize_t));
    c->value_len = PyMem_Malloc(n * sizeof(Py_ssize_t));
    if (!c->key_at || !c->key_len || !c->value_at || !c->value_len) {
        Py_DECREF(c);
        return PyErr_NoMemory();
    }
    const unsigned char *base = c->view.buf;
    cbor_reader r = {base, base + c->view.len};
    int major;
    uint64_t arg;
    /* [null, timestamp deltas, keys, values]: 4 columns, consecutive offsets. */
    if (cbor_get_head(&r, &major, &arg) < 0 || major != CBOR_ARRAY || arg != 4)
        goto other;
    if (cbor_get_head(&r, &major, &arg) < 0 || major != 7)
        goto other;
    const unsigned char *ts_at = r.p;
    if (cbor_get_head(&r, &major, &arg) < 0)
        goto other;
    if (major == CBOR_ARRAY) {
        if (arg != (uint64_t)n || (c->ts = PyMem_Malloc(n * sizeof(int64_t))) == NULL)
            goto other;
        for (Py_ssize_t i = 0; i < n; i++)
            if (read_int(&r, &c->ts[i]) < 0)
                goto other;
    } else {
        r.p = ts_at;
        if (read_int(&r, &c->ts_all) < 0)
            goto other;
    }
    if (read_bytes_column(&r, base, n, c->key_at, c->key_len) < 0
        || read_bytes_column(&r, base, n, c->value_at, c->value_len) < 0 || r.p != r.end)
        goto other;
    return (PyObject *)c;
other:
    Py_DECREF(c);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static int check_range(columns_obj *c, Py_ssize_t start, Py_ssize_t stop)
{
    if (start < 0 || stop > c->count || start > stop) {
        PyErr_Format(PyExc_IndexError, "records %zd:%zd of %zd", start, stop, c->count);
        return -1;
    }
    return 0;
}

static PyObject *bytes_at(columns_obj *c, Py_ssize_t at, Py_ssize_t len)
{
    if (at < 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)c->view.buf + at, len);
}

static PyObject *column(columns_obj *c, PyObject *args, int values)
{
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "nn", &start, &stop) || check_range(c, start, stop) < 0)
        return NULL;
    Py_ssize_t *at = values ? c->value_at : c->key_at;
    Py_ssize_t *len = values ? c->value_len : c->key_len;
    PyObject *out = PyList_New(stop - start);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = start; i < stop; i++) {
        PyObject *item = bytes_at(c, at[i], len[i]);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i - start, item);
    }
    return out;
}

static PyObject *columns_keys(columns_obj *c, PyObject *args) { return column(c, args, 0); }
static PyObject *columns_values(columns_obj *c, PyObject *args) { return column(c, args, 1); }

static PyObject *columns_ts_deltas(columns_obj *c, PyObject *args)
{
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "nn", &start, &stop) || check_range(c, start, stop) < 0)
        return NULL;
    PyObject *out = PyList_New(stop - start);
    for (Py_ssize_t i = start; out != NULL && i < stop; i++) {
        PyObject *item = PyLong_FromLongLong(c->ts ? c->ts[i] : c->ts_all);
        if (item == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i - start, item);
    }
    return out;
}

/* records(start, stop, topic, partition, base_offset, first_timestamp, timestamp_type,
 * keys=None, values=None) -> [ConsumerRecord]: keys/values, when given, are the
 * deserialized ones of records start:stop (the serialized sizes still come from here). */
static PyObject *columns_records(columns_obj *c, PyObject *args)
{
    Py_ssize_t start, stop;
    PyObject *topic, *partition, *ts_type, *keys = Py_None, *values = Py_None;
    long long base, first_ts;
    if (!PyArg_ParseTuple(args, "nnOOLLO|OO", &start, &stop, &topic, &partition, &base, &first_ts,
                          &ts_type, &keys, &values)
        || check_range(c, start, stop) < 0)
        return NULL;
    if (record_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "kvlog._records.set_record_type() was not called");
        return NULL;
    }
    if ((keys != Py_None && (!PyList_Check(keys) || PyList_GET_SIZE(keys) != stop - start))
        || (values != Py_None
            && (!PyList_Check(values) || PyList_GET_SIZE(values) != stop - start))) {
        PyErr_SetString(PyExc_ValueError, "keys and values: one per record");
        return NULL;
    }
    PyObject *out = PyList_New(stop - start);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = start; i < stop; i++) {
        PyObject *key = keys == Py_None ? bytes_at(c, c->key_at[i], c->key_len[i])
                                        : Py_NewRef(PyList_GET_ITEM(keys, i - start));
        PyObject *value = values == Py_None ? bytes_at(c, c->value_at[i], c->value_len[i])
                                            : Py_NewRef(PyList_GET_ITEM(values, i - start));
        PyObject *offset = PyLong_FromLongLong(base + i);
        PyObject *ts = PyLong_FromLongLong(first_ts + (c->ts ? c->ts[i] : c->ts_all));
        PyObject *key_size = PyLong_FromSsize_t(c->key_at[i] < 0 ? -1 : c->key_len[i]);
        PyObject *value_size = PyLong_FromSsize_t(c->value_at[i] < 0 ? -1 : c->value_len[i]);
        PyObject *rec = record_type->tp_alloc(record_type, 10);
        if (!key || !value || !offset || !ts || !key_size || !value_size || !rec) {
            Py_XDECREF(key);
            Py_XDECREF(value);
            Py_XDECREF(offset);
            Py_XDECREF(ts);
            Py_XDECREF(key_size);
            Py_XDECREF(value_size);
            Py_XDECREF(rec);
            Py_DECREF(out);
            return NULL;
        }
        /* topic, partition, offset, timestamp, key, value, headers, timestamp_type,
         * serialized_key_size, serialized_value_size */
        PyTuple_SET_ITEM(rec, 0, Py_NewRef(topic));
        PyTuple_SET_ITEM(rec, 1, Py_NewRef(partition));
        PyTuple_SET_ITEM(rec, 2, offset);
        PyTuple_SET_ITEM(rec, 3, ts);
        PyTuple_SET_ITEM(rec, 4, key);
        PyTuple_SET_ITEM(rec, 5, value);
        PyTuple_SET_ITEM(rec, 6, Py_NewRef(no_headers));
        PyTuple_SET_ITEM(rec, 7, Py_NewRef(ts_type));
        PyTuple_SET_ITEM(rec, 8, key_size);
        PyTuple_SET_ITEM(rec, 9, value_size);
        /* Bytes and ints only: no cycle can pass through it (as the collector itself
         * would conclude at its first pass). Deserialized objects may hold containers. */
        if (keys == Py_None && values == Py_None)
            PyObject_GC_UnTrack(rec);
        PyList_SET_ITEM(out, i - start, rec);
    }
    return out;
}

static Py_ssize_t columns_len(columns_obj *c) { return c->count; }

static PyObject *columns_get_same_ts(columns_obj *c, void *closure)
{
    if (c->ts != NULL)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(c->ts_all);
}

static PyMethodDef columns_methods[] = {
    {"keys", (PyCFunction)columns_keys, METH_VARARGS, "keys(start, stop) -> [bytes | None]"},
    {"values", (PyCFunction)columns_values, METH_VARARGS,
     "values(start, stop) -> [bytes | None]"},
    {"ts_deltas", (PyCFunction)columns_ts_deltas, METH_VARARGS, "ts_deltas(start, stop)"},
    {"records", (PyCFunction)columns_records, METH_VARARGS,
     "records(start, stop, topic, partition, base_offset, first_timestamp, timestamp_type, "
     "keys=None, values=None) -> [ConsumerRecord]"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef columns_getset[] = {
    {"same_ts_delta", (getter)columns_get_same_ts, NULL,
     "The timestamp delta every record shares, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods columns_as_sequence = {.sq_length = (lenfunc)columns_len};

static PyTypeObject ColumnsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvlog._records.Columns",
    .tp_doc = "A native batch's records, indexed in place (owned by one DecodedBatch).",
    .tp_basicsize = sizeof(columns_obj),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)columns_dealloc,
    .tp_methods = columns_methods,
    .tp_getset = columns_getset,
    .tp_as_sequence = &columns_as_sequence,
};

static PyObject *set_record_type(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0])
        || !PyType_IsSubtype((PyTypeObject *)args[0], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "set_record_type(tuple subclass, no_headers)");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_XSETREF(record_type, (PyTypeObject *)args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(no_headers, args[1]);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "parse(payload, count) -> Columns, or None for a payload of another shape"},
    {"set_record_type", (PyCFunction)(void (*)(void))set_record_type, METH_FASTCALL,
     "set_record_type(ConsumerRecord, NO_HEADERS): what records() builds"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kvlog._records", NULL, -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__records(void)
{
    if (PyType_Ready(&ColumnsType) < 0)
        return NULL;
    return PyModule_Create(&module);
}
