/* A producer batch in C: its columns as records arrive, its encoded payload, and the
 * future every record's handle points at (ipc/futures.py documents the behaviour; the
 * pure-Python twins are ipc/futures.BatchFuture and ipc/accumulator.ProducerBatch). */
#include "_accumulator.h"

#include <structmember.h>

PyObject *kv_handle_type = NULL;
PyObject *kv_event_type = NULL;
PyObject *kv_logger = NULL;
PyObject *kv_cbor_loads = NULL;

/* -- BatchFuture ------------------------------------------------------------------------- */

static PyObject *future_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) || (kwargs != NULL && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "BatchFuture() takes no arguments");
        return NULL;
    }
    kv_future *f = (kv_future *)type->tp_alloc(type, 0);
    if (f == NULL)
        return NULL;
    f->base_offset = -1;
    f->log_start_offset = -1;
    return (PyObject *)f;
}

static int future_traverse(kv_future *f, visitproc visit, void *arg)
{
    Py_VISIT(f->error);
    Py_VISIT(f->event);
    Py_VISIT(f->callbacks);
    return 0;
}

static int future_clear(kv_future *f)
{
    Py_CLEAR(f->error);
    Py_CLEAR(f->event);
    Py_CLEAR(f->callbacks);
    return 0;
}

static void future_dealloc(kv_future *f)
{
    PyObject_GC_UnTrack(f);
    if (f->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)f);
    future_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

/* A callback raised: log it (with its traceback) and go on with the others. */
static void log_callback_error(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *method = kv_logger ? PyObject_GetAttrString(kv_logger, "error") : NULL;
    PyObject *args = Py_BuildValue("(s)", "a produce callback raised");
    PyObject *kwargs = Py_BuildValue("{s:O}", "exc_info", value ? value : Py_None);
    PyObject *r = NULL;
    if (method != NULL && args != NULL && kwargs != NULL)
        r = PyObject_Call(method, args, kwargs);
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)NULL);
    Py_XDECREF(r);
    Py_XDECREF(method);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

static void batch_release_columns(kv_batch *b);

/* Completion: wake the waiters, run the callbacks once (their errors are logged). */
static int future_finish(kv_future *f)
{
    f->done = 1;
    PyObject *event = f->event;
    Py_XINCREF(event);
    PyObject *callbacks = f->callbacks;
    f->callbacks = NULL;
    if (PyObject_TypeCheck(f, &kv_BatchType))
        batch_release_columns((kv_batch *)f);
    if (event != NULL) {
        PyObject *r = PyObject_CallMethod(event, "set", NULL);
        Py_DECREF(event);
        if (r == NULL) {
            Py_XDECREF(callbacks);
            return -1;
        }
        Py_DECREF(r);
    }
    if (callbacks != NULL) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(callbacks); i++) {
            PyObject *r = PyObject_CallOneArg(PyList_GET_ITEM(callbacks, i), (PyObject *)f);
            if (r == NULL)
                log_callback_error();
            Py_XDECREF(r);
        }
        Py_DECREF(callbacks);
    }
    return 0;
}

static PyObject *future_done(kv_future *f, PyObject *unused)
{
    return PyBool_FromLong(f->done);
}

static PyObject *future_wait(kv_future *f, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:wait", kwlist, &timeout))
        return NULL;
    if (f->done)
        Py_RETURN_TRUE;
    if (f->event == NULL) {
        /* Making the Event runs Python code: completion may happen meanwhile. */
        PyObject *made = PyObject_CallNoArgs(kv_event_type);
        if (made == NULL)
            return NULL;
        if (f->done) {
            Py_DECREF(made);
            Py_RETURN_TRUE;
        }
        if (f->event == NULL)
            f->event = made;
        else
            Py_DECREF(made);
    }
    PyObject *event = f->event;
    Py_INCREF(event);
    PyObject *r = PyObject_CallMethod(event, "wait", "O", timeout);
    Py_DECREF(event);
    return r;
}

static PyObject *future_set_result(kv_future *f, PyObject *args)
{
    long long base_offset, log_start_offset = -1;
    if (!PyArg_ParseTuple(args, "L|L:set_result", &base_offset, &log_start_offset))
        return NULL;
    f->base_offset = base_offset;
    f->log_start_offset = log_start_offset;
    if (future_finish(f) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *future_set_exception(kv_future *f, PyObject *error)
{
    Py_INCREF(error);
    Py_XSETREF(f->error, error);
    if (future_finish(f) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *future_add_callback(kv_future *f, PyObject *fn)
{
    if (!f->done) {
        if (f->callbacks == NULL && (f->callbacks = PyList_New(0)) == NULL)
            return NULL;
        if (PyList_Append(f->callbacks, fn) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *r = PyObject_CallOneArg(fn, (PyObject *)f);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *future_get_error(kv_future *f, void *closure)
{
    PyObject *error = f->error ? f->error : Py_None;
    Py_INCREF(error);
    return error;
}

static PyMethodDef future_methods[] = {
    {"done", (PyCFunction)future_done, METH_NOARGS, "Whether the batch was completed."},
    {"wait", (PyCFunction)(void (*)(void))future_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(timeout) -> bool: block until completed (False on timeout)."},
    {"set_result", (PyCFunction)future_set_result, METH_VARARGS,
     "set_result(base_offset, log_start_offset=-1): acknowledged (I/O thread)."},
    {"set_exception", (PyCFunction)future_set_exception, METH_O,
     "set_exception(error): failed (I/O thread)."},
    {"add_callback", (PyCFunction)future_add_callback, METH_O,
     "add_callback(fn): fn(future) once completed (at once if it is)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef future_members[] = {
    {"base_offset", T_LONGLONG, offsetof(kv_future, base_offset), READONLY, NULL},
    {"log_start_offset", T_LONGLONG, offsetof(kv_future, log_start_offset), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef future_getset[] = {
    {"error", (getter)future_get_error, NULL, "The batch's exception, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject kv_FutureType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvlog._accumulator.BatchFuture",
    .tp_doc = "One produced batch's future: completed once by the producer's I/O thread, "
              "waited on by any thread (ipc/futures.py).",
    .tp_basicsize = sizeof(kv_future),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_new = future_new,
    .tp_dealloc = (destructor)future_dealloc,
    .tp_traverse = (traverseproc)future_traverse,
    .tp_clear = (inquiry)future_clear,
    .tp_weaklistoffset = offsetof(kv_future, weakreflist),
    .tp_methods = future_methods,
    .tp_members = future_members,
    .tp_getset = future_getset,
};

/* -- Batch ------------------------------------------------------------------------------- */

kv_batch *kv_batch_new(kv_entry *entry, Py_ssize_t partition, double now, double deadline)
{
    kv_batch *b = PyObject_GC_New(kv_batch, &kv_BatchType);
    if (b == NULL)
        return NULL;
    /* Everything after the object header starts at zero. */
    memset((char *)b + sizeof(PyObject), 0, sizeof(kv_batch) - sizeof(PyObject));
    b->future.base_offset = -1;
    b->future.log_start_offset = -1;
    b->tp = PyList_GET_ITEM(entry->tps, partition);
    Py_INCREF(b->tp);
    Py_INCREF(entry);
    b->entry = entry;
    b->partition = partition;
    b->created = now;
    b->deadline = deadline;
    b->max_timestamp = -1;
    b->base_sequence = -1;
    b->producer_epoch = -1;
    b->state = BATCH_OPEN;
    PyObject_GC_Track(b);
    return b;
}

int kv_batch_append(kv_batch *b, long long timestamp, const char *key, Py_ssize_t klen,
                    const char *value, Py_ssize_t vlen, const cbor_buf *headers, int hkind,
                    Py_ssize_t size)
{
    int with_headers = hkind == 2 || b->has_headers;
    if (cbor_reserve(&b->ts, 9) < 0 || cbor_reserve(&b->keys, 9 + (klen > 0 ? klen : 0)) < 0
        || cbor_reserve(&b->values, 9 + (vlen > 0 ? vlen : 0)) < 0)
        return -1;
    if (with_headers) {
        Py_ssize_t need = 1 + (hkind == 2 ? headers->len : 0) + (b->has_headers ? 0 : b->count);
        if (cbor_reserve(&b->headers, need) < 0)
            return -1;
    }
    if (b->count == 0)
        b->first_timestamp = timestamp;
    if (timestamp > b->max_timestamp)
        b->max_timestamp = timestamp;
    long long delta = timestamp - b->first_timestamp;
    if (delta != 0)
        b->ts_nonzero = 1;
    b->ts.len = cbor_put_int(b->ts.data + b->ts.len, delta) - b->ts.data;
    b->keys.len = cbor_put_bytes(b->keys.data + b->keys.len, key, klen) - b->keys.data;
    b->values.len = cbor_put_bytes(b->values.data + b->values.len, value, vlen) - b->values.data;
    if (with_headers) {
        unsigned char *p = b->headers.data + b->headers.len;
        if (!b->has_headers) {
            /* The column starts now: every earlier record had none. */
            memset(p, CBOR_NULL, (size_t)b->count);
            p += b->count;
            b->has_headers = 1;
        }
        if (hkind == 2) {
            memcpy(p, headers->data, (size_t)headers->len);
            p += headers->len;
        } else {
            *p++ = hkind == 1 ? (unsigned char)(CBOR_ARRAY << 5) : CBOR_NULL;
        }
        b->headers.len = p - b->headers.data;
    }
    b->count++;
    b->size += size;
    return 0;
}

static void batch_release_columns(kv_batch *b)
{
    cbor_free(&b->ts);
    cbor_free(&b->keys);
    cbor_free(&b->values);
    cbor_free(&b->headers);
    Py_CLEAR(b->payload);
    Py_CLEAR(b->encoded);
}

/* The payload as kvlog/batch.py encodes these columns, byte for byte. */
static PyObject *build_payload(kv_batch *b)
{
    uint64_t n = (uint64_t)b->count;
    Py_ssize_t head = cbor_head_size(n);
    Py_ssize_t total = 2 + (b->ts_nonzero ? head + b->ts.len : 1) + head + b->keys.len + head
                       + b->values.len + (b->has_headers ? head + b->headers.len : 0);
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    *p++ = (unsigned char)((CBOR_ARRAY << 5) | (b->has_headers ? 5 : 4));
    *p++ = CBOR_NULL; /* offset deltas: consecutive */
    if (b->ts_nonzero) {
        p = cbor_put_head(p, CBOR_ARRAY, n);
        memcpy(p, b->ts.data, (size_t)b->ts.len);
        p += b->ts.len;
    } else {
        *p++ = 0; /* every record has delta 0: one int */
    }
    p = cbor_put_head(p, CBOR_ARRAY, n);
    memcpy(p, b->keys.data, (size_t)b->keys.len);
    p += b->keys.len;
    p = cbor_put_head(p, CBOR_ARRAY, n);
    memcpy(p, b->values.data, (size_t)b->values.len);
    p += b->values.len;
    if (b->has_headers) {
        p = cbor_put_head(p, CBOR_ARRAY, n);
        memcpy(p, b->headers.data, (size_t)b->headers.len);
    }
    return out;
}

PyObject *kv_batch_payload(kv_batch *b)
{
    if (b->payload != NULL) {
        Py_INCREF(b->payload);
        return b->payload;
    }
    if (b->count == 0) {
        PyErr_SetString(PyExc_ValueError, "a record batch needs at least one record");
        return NULL;
    }
    if (b->future.done) {
        PyErr_SetString(PyExc_ValueError, "the batch was completed: its records are gone");
        return NULL;
    }
    PyObject *payload = build_payload(b);
    if (payload == NULL || b->state == BATCH_OPEN)
        return payload; /* an open batch may still grow: not cached */
    /* Closed: keep the payload (retries re-encode from it), drop the columns. */
    Py_INCREF(payload);
    b->payload = payload;
    cbor_free(&b->ts);
    cbor_free(&b->keys);
    cbor_free(&b->values);
    cbor_free(&b->headers);
    return payload;
}

static int batch_traverse(kv_batch *b, visitproc visit, void *arg)
{
    Py_VISIT(b->tp);
    Py_VISIT(b->encoded);
    Py_VISIT(b->payload);
    Py_VISIT((PyObject *)b->entry);
    return future_traverse(&b->future, visit, arg);
}

static int batch_clear(kv_batch *b)
{
    Py_CLEAR(b->tp);
    Py_CLEAR(b->encoded);
    Py_CLEAR(b->payload);
    Py_CLEAR(b->entry);
    return future_clear(&b->future);
}

static void batch_dealloc(kv_batch *b)
{
    PyObject_GC_UnTrack(b);
    if (b->future.weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)b);
    batch_clear(b);
    cbor_free(&b->ts);
    cbor_free(&b->keys);
    cbor_free(&b->values);
    cbor_free(&b->headers);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *batch_repr(kv_batch *b)
{
    return PyUnicode_FromFormat("<ProducerBatch %S n=%zd seq=%lld>", b->tp ? b->tp : Py_None,
                                b->count, b->base_sequence);
}

static PyObject *batch_get_payload(kv_batch *b, PyObject *unused)
{
    return kv_batch_payload(b);
}

static PyObject *batch_get_self(PyObject *self, void *closure)
{
    Py_INCREF(self);
    return self;
}

static PyObject *batch_get_count(kv_batch *b, void *closure)
{
    return PyLong_FromSsize_t(b->count);
}

static PyObject *batch_get_encoded(kv_batch *b, void *closure)
{
    PyObject *encoded = b->encoded ? b->encoded : Py_None;
    Py_INCREF(encoded);
    return encoded;
}

static int batch_set_encoded(kv_batch *b, PyObject *value, void *closure)
{
    if (value == Py_None)
        value = NULL;
    if (value != NULL && !PyBytes_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "encoded must be bytes or None");
        return -1;
    }
    Py_XINCREF(value);
    Py_XSETREF(b->encoded, value);
    return 0;
}

/* One column of the payload, decoded with cbor2 (tests and debugging). */
static PyObject *batch_column(kv_batch *b, int index)
{
    PyObject *payload = b->payload ? (Py_INCREF(b->payload), b->payload) : build_payload(b);
    if (payload == NULL)
        return NULL;
    PyObject *columns = PyObject_CallOneArg(kv_cbor_loads, payload);
    Py_DECREF(payload);
    if (columns == NULL)
        return NULL;
    PyObject *out = Py_None;
    if (index < PyList_GET_SIZE(columns))
        out = PyList_GET_ITEM(columns, index);
    if (index == 1 && PyLong_Check(out)) { /* one shared delta: one per record */
        PyObject *list = PyList_New(b->count);
        if (list != NULL)
            for (Py_ssize_t i = 0; i < b->count; i++) {
                Py_INCREF(out);
                PyList_SET_ITEM(list, i, out);
            }
        Py_DECREF(columns);
        return list;
    }
    Py_INCREF(out);
    Py_DECREF(columns);
    return out;
}

static PyObject *batch_get_ts_deltas(kv_batch *b, void *c) { return batch_column(b, 1); }
static PyObject *batch_get_keys(kv_batch *b, void *c) { return batch_column(b, 2); }
static PyObject *batch_get_values(kv_batch *b, void *c) { return batch_column(b, 3); }
static PyObject *batch_get_headers(kv_batch *b, void *c) { return batch_column(b, 4); }

static PyMethodDef batch_methods[] = {
    {"payload", (PyCFunction)batch_get_payload, METH_NOARGS,
     "The records as kvlog's columnar CBOR payload (kvlog/batch.py), uncompressed."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef batch_members[] = {
    {"tp", T_OBJECT, offsetof(kv_batch, tp), READONLY, NULL},
    {"created", T_DOUBLE, offsetof(kv_batch, created), READONLY, NULL},
    {"deadline", T_DOUBLE, offsetof(kv_batch, deadline), READONLY, NULL},
    {"retry_at", T_DOUBLE, offsetof(kv_batch, retry_at), 0, NULL},
    {"first_timestamp", T_LONGLONG, offsetof(kv_batch, first_timestamp), READONLY, NULL},
    {"max_timestamp", T_LONGLONG, offsetof(kv_batch, max_timestamp), READONLY, NULL},
    {"base_sequence", T_LONGLONG, offsetof(kv_batch, base_sequence), 0, NULL},
    {"producer_epoch", T_INT, offsetof(kv_batch, producer_epoch), 0, NULL},
    {"attempts", T_INT, offsetof(kv_batch, attempts), 0, NULL},
    {"size", T_PYSSIZET, offsetof(kv_batch, size), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef batch_getset[] = {
    {"future", (getter)batch_get_self, NULL, "The batch itself: it is its own future.", NULL},
    {"record_count", (getter)batch_get_count, NULL, NULL, NULL},
    {"encoded", (getter)batch_get_encoded, (setter)batch_set_encoded,
     "The encoded batch the sender built (None until then, or after renumbering).", NULL},
    {"ts_deltas", (getter)batch_get_ts_deltas, NULL, "Decoded column (tests).", NULL},
    {"keys", (getter)batch_get_keys, NULL, "Decoded column (tests).", NULL},
    {"values", (getter)batch_get_values, NULL, "Decoded column (tests).", NULL},
    {"headers", (getter)batch_get_headers, NULL, "Decoded column or None (tests).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject kv_BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvlog._accumulator.ProducerBatch",
    .tp_doc = "One partition's batch from its first record to its acknowledgement; its own "
              "future. Owned by the accumulator; sequencing fields set by the I/O thread.",
    .tp_basicsize = sizeof(kv_batch),
    .tp_base = &kv_FutureType,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_traverse = (traverseproc)batch_traverse,
    .tp_clear = (inquiry)batch_clear,
    .tp_repr = (reprfunc)batch_repr,
    .tp_methods = batch_methods,
    .tp_members = batch_members,
    .tp_getset = batch_getset,
};

/* -- RecordHandle ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *batch;
    PyObject *topic;
    Py_ssize_t delta;
    long partition;
    long long timestamp;
    Py_ssize_t key_size;
    Py_ssize_t value_size;
} kv_handle;

PyObject *kv_handle_new(PyObject *batch, Py_ssize_t delta, PyObject *topic, long partition,
                        long long timestamp, Py_ssize_t key_size, Py_ssize_t value_size)
{
    PyTypeObject *type = (PyTypeObject *)kv_handle_type;
    kv_handle *h = (kv_handle *)type->tp_alloc(type, 0);
    if (h == NULL)
        return NULL;
    /* A million pending handles must not make the collector crawl: they hold no
     * container of their own, and their batch clears its callbacks on completion. */
    if (PyObject_GC_IsTracked((PyObject *)h))
        PyObject_GC_UnTrack(h);
    Py_INCREF(batch);
    h->batch = batch;
    Py_INCREF(topic);
    h->topic = topic;
    h->delta = delta;
    h->partition = partition;
    h->timestamp = timestamp;
    h->key_size = key_size;
    h->value_size = value_size;
    return (PyObject *)h;
}

static PyObject *handle_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"batch",     "delta",    "topic",      "partition",
                             "timestamp", "key_size", "value_size", NULL};
    PyObject *batch, *topic;
    Py_ssize_t delta, key_size, value_size;
    long partition;
    long long timestamp;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OnOlLnn:FutureRecordMetadata", kwlist,
                                     &batch, &delta, &topic, &partition, &timestamp, &key_size,
                                     &value_size))
        return NULL;
    kv_handle *h = (kv_handle *)type->tp_alloc(type, 0);
    if (h == NULL)
        return NULL;
    Py_INCREF(batch);
    h->batch = batch;
    Py_INCREF(topic);
    h->topic = topic;
    h->delta = delta;
    h->partition = partition;
    h->timestamp = timestamp;
    h->key_size = key_size;
    h->value_size = value_size;
    return (PyObject *)h;
}

static void handle_dealloc(kv_handle *h)
{
    Py_XDECREF(h->batch);
    Py_XDECREF(h->topic);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyMemberDef handle_members[] = {
    {"_batch", T_OBJECT, offsetof(kv_handle, batch), READONLY, NULL},
    {"_delta", T_PYSSIZET, offsetof(kv_handle, delta), READONLY, NULL},
    {"topic", T_OBJECT, offsetof(kv_handle, topic), READONLY, NULL},
    {"partition", T_LONG, offsetof(kv_handle, partition), READONLY, NULL},
    {"timestamp", T_LONGLONG, offsetof(kv_handle, timestamp), READONLY, NULL},
    {"_key_size", T_PYSSIZET, offsetof(kv_handle, key_size), READONLY, NULL},
    {"_value_size", T_PYSSIZET, offsetof(kv_handle, value_size), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject kv_HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvlog._accumulator.RecordHandle",
    .tp_doc = "The fields of one record's pending metadata: its batch's future and its "
              "offset delta in the batch (ipc/futures.FutureRecordMetadata adds the API).",
    .tp_basicsize = sizeof(kv_handle),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = handle_new,
    .tp_dealloc = (destructor)handle_dealloc,
    .tp_members = handle_members,
};

int kv_types_ready(void)
{
    if (PyType_Ready(&kv_FutureType) < 0 || PyType_Ready(&kv_BatchType) < 0
        || PyType_Ready(&kv_HandleType) < 0 || PyType_Ready(&kv_EntryType) < 0)
        return -1;
    return 0;
}
