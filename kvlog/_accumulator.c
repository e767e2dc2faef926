/* The producer's record accumulator in C: Producer.send() per record without Python.
 *
 * send(topic, value, key, headers, partition, timestamp_ms) serializes (bytes pass as
 * they are; other values go through the configured serializer), picks the partition
 * (Kafka's murmur2 of the key; the sticky partition for a null key; or the one given),
 * appends the record into that partition's open batch as CBOR columns, and returns a
 * handle pointing at the batch, which is its own future. A batch closes when it reaches
 * batch.size; the I/O thread takes closed and lingered batches (ready, drain) and never
 * touches a record. append_records() is send_batch()'s path: the same per record, one
 * call for many.
 *
 * ipc/accumulator.py holds the Python subclass (blocking waits, hooks into the producer)
 * and the pure-Python twin, PyRecordAccumulator, which tests hold this to.
 *
 * Hooks (methods of the Python subclass, called only before a record's state changes or
 * after they are done): _on_topic(topic) registers a topic it does not know (or whose
 * metadata changed) with set_topic(); _choose_sticky(topic, count, current) picks the
 * next sticky partition; _wait_for_room(size) blocks while buffer.memory is full;
 * _wake() wakes the I/O thread; _check_timestamp(ts) refuses a bad timestamp.
 *
 * When send() closes a batch while its partition already holds `yield_batches` closed
 * batches waiting to be sent, it releases the GIL until the I/O thread reports progress
 * (at most `yield_timeout_s`): the records it would add could not be sent sooner, and
 * the I/O thread, which needs the GIL to handle the replies that free the partition's
 * window, would otherwise wait for the interpreter's switch interval.
 *
 * The code is split by job over the files listed in _accumulator.h; this one holds the
 * Accumulator type itself (configuration, metadata, life cycle) and the module. */
#include "_accumulator.h"

#include <structmember.h>
#include <time.h>

PyObject *kv_ProducerClosedError, *kv_InvalidPartitionsError, *kv_SerializationError;
PyObject *kv_s_on_topic, *kv_s_choose_sticky, *kv_s_wait_for_room, *kv_s_wake,
    *kv_s_check_timestamp;
PyObject *kv_s_topic, *kv_s_value, *kv_s_key, *kv_s_headers, *kv_s_partition,
    *kv_s_timestamp_ms;

/* set_topic(topic, tps, version): the topic's partitions as the metadata gives them. */
static PyObject *acc_set_topic(kv_acc *self, PyObject *args)
{
    PyObject *topic, *tps;
    long long version;
    if (!PyArg_ParseTuple(args, "UO!L:set_topic", &topic, &PyList_Type, &tps, &version))
        return NULL;
    kv_entry *e = kv_entry_get(self, topic, 1);
    if (e == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(tps);
    if (kv_entry_grow(e, n) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *tp = PyList_GET_ITEM(tps, i);
        Py_INCREF(tp);
        if (PyList_SetItem(e->tps, i, tp) < 0)
            return NULL;
    }
    e->count = n;
    e->version = version;
    self->version = version;
    Py_RETURN_NONE;
}

static PyObject *acc_set_version(kv_acc *self, PyObject *arg)
{
    long long version = PyLong_AsLongLong(arg);
    if (version == -1 && PyErr_Occurred())
        return NULL;
    self->version = version;
    Py_RETURN_NONE;
}

static PyObject *acc_sticky(kv_acc *self, PyObject *topic)
{
    kv_entry *e = kv_entry_get(self, topic, 0);
    if (e == NULL && PyErr_Occurred())
        return NULL;
    if (e == NULL || e->sticky < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(e->sticky);
}

/* _configure(batch_size, linger_s, buffer_memory, delivery_timeout_s, yield_batches,
 * yield_timeout_s, key_serializer, value_serializer, raw_keys, raw_values) */
static PyObject *acc_configure(kv_acc *self, PyObject *args)
{
    PyObject *ks, *vs;
    int raw_keys, raw_values;
    if (!PyArg_ParseTuple(args, "ndndndOOpp:_configure", &self->batch_size, &self->linger_s,
                          &self->buffer_memory, &self->delivery_timeout_s, &self->yield_batches,
                          &self->yield_timeout_s, &ks, &vs, &raw_keys, &raw_values))
        return NULL;
    Py_INCREF(ks);
    Py_XSETREF(self->key_serializer, ks);
    Py_INCREF(vs);
    Py_XSETREF(self->value_serializer, vs);
    self->raw_keys = raw_keys;
    self->raw_values = raw_values;
    Py_RETURN_NONE;
}

static PyObject *acc_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    kv_acc *self = (kv_acc *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->topics = PyDict_New();
    self->version = -1;
    self->batch_size = 16384;
    self->buffer_memory = 1 << 25;
    Py_INCREF(Py_None);
    self->key_serializer = Py_None;
    Py_INCREF(Py_None);
    self->value_serializer = Py_None;
    self->raw_keys = self->raw_values = 1;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&self->cv, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&self->mu, NULL);
    if (self->topics == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int acc_traverse(kv_acc *self, visitproc visit, void *arg)
{
    Py_VISIT(self->topics);
    Py_VISIT(self->key_serializer);
    Py_VISIT(self->value_serializer);
    for (kv_batch *b = self->inc_head; b != NULL; b = b->inext)
        Py_VISIT((PyObject *)b);
    return 0;
}

static int acc_clear(kv_acc *self)
{
    Py_CLEAR(self->topics);
    Py_CLEAR(self->key_serializer);
    Py_CLEAR(self->value_serializer);
    while (self->inc_head != NULL) {
        kv_batch *b = self->inc_head;
        kv_inc_remove(self, b);
        Py_DECREF(b);
    }
    return 0;
}

static void acc_dealloc(kv_acc *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    acc_clear(self);
    pthread_cond_destroy(&self->cv);
    pthread_mutex_destroy(&self->mu);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef acc_methods[] = {
    {"send", (PyCFunction)(void (*)(void))acc_send, METH_FASTCALL | METH_KEYWORDS,
     "send(topic, value=None, key=None, headers=None, partition=None, timestamp_ms=None) "
     "-> FutureRecordMetadata (Producer.send)."},
    {"append", (PyCFunction)(void (*)(void))acc_append, METH_VARARGS | METH_KEYWORDS,
     "append(tp, timestamp, key, value, headers, now) -> (batch, delta, filled)"},
    {"append_records", (PyCFunction)(void (*)(void))acc_append_records, METH_VARARGS | METH_KEYWORDS,
     "append_records(topic, values, keys, partition, timestamp, now) -> "
     "(batches, batch_of, deltas) (send_batch: int32 columns as bytes)"},
    {"ready", (PyCFunction)acc_ready, METH_O, "ready(now) -> (tps, next_due)"},
    {"drain", (PyCFunction)(void (*)(void))acc_drain, METH_VARARGS | METH_KEYWORDS, "drain(tp, now) -> batch or None"},
    {"requeue_front", (PyCFunction)(void (*)(void))acc_requeue_front, METH_VARARGS | METH_KEYWORDS,
     "requeue_front(batches, retry_at)"},
    {"_release", (PyCFunction)acc_complete, METH_O,
     "_release(batch) -> whether its memory was freed now"},
    {"expired", (PyCFunction)acc_expired, METH_O, "expired(now) -> [batch]"},
    {"abort_all", (PyCFunction)acc_abort_all, METH_NOARGS, "abort_all() -> [batch]"},
    {"incomplete", (PyCFunction)acc_incomplete, METH_NOARGS, "incomplete() -> [batch]"},
    {"queued", (PyCFunction)acc_queued, METH_O, "queued(tp) -> closed batches waiting"},
    {"progress", (PyCFunction)acc_progress, METH_NOARGS,
     "progress(): the sender moved (wakes a send() that yields to it)."},
    {"sender_thread", (PyCFunction)acc_sender_thread, METH_NOARGS,
     "sender_thread(): the calling thread is the sender's (send() from a callback there "
     "never yields to it)."},
    {"begin_flush", (PyCFunction)acc_begin_flush, METH_NOARGS, NULL},
    {"end_flush", (PyCFunction)acc_end_flush, METH_NOARGS, NULL},
    {"_close", (PyCFunction)acc_close, METH_NOARGS, NULL},
    {"refuse", (PyCFunction)acc_refuse, METH_NOARGS, "refuse(): send() raises from now on."},
    {"set_topic", (PyCFunction)acc_set_topic, METH_VARARGS, "set_topic(topic, tps, version)"},
    {"set_version", (PyCFunction)acc_set_version, METH_O, "set_version(metadata_version)"},
    {"sticky", (PyCFunction)acc_sticky, METH_O, "sticky(topic) -> partition or None"},
    {"_configure", (PyCFunction)acc_configure, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef acc_members[] = {
    {"batch_size", T_PYSSIZET, offsetof(kv_acc, batch_size), READONLY, NULL},
    {"buffer_memory", T_PYSSIZET, offsetof(kv_acc, buffer_memory), READONLY, NULL},
    {"linger_s", T_DOUBLE, offsetof(kv_acc, linger_s), READONLY, NULL},
    {"delivery_timeout_s", T_DOUBLE, offsetof(kv_acc, delivery_timeout_s), READONLY, NULL},
    {"_used", T_PYSSIZET, offsetof(kv_acc, used), READONLY, NULL},
    {"closed", T_INT, offsetof(kv_acc, closed), READONLY, NULL},
    {"stalled", T_INT, offsetof(kv_acc, stalled), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef acc_getset[] = {
    {"has_unsent", (getter)acc_get_has_unsent, NULL, "Open or queued batches remain.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject kv_AccType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvlog._accumulator.Accumulator",
    .tp_doc = "The producer's batches per partition (see the module). Shared by user "
              "threads (send, append) and the I/O thread (ready, drain, complete): every "
              "method is atomic under the GIL.",
    .tp_basicsize = sizeof(kv_acc),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_new = acc_new,
    .tp_dealloc = (destructor)acc_dealloc,
    .tp_traverse = (traverseproc)acc_traverse,
    .tp_clear = (inquiry)acc_clear,
    .tp_weaklistoffset = offsetof(kv_acc, weakreflist),
    .tp_methods = acc_methods,
    .tp_members = acc_members,
    .tp_getset = acc_getset,
};

static PyObject *set_handle_type(PyObject *module, PyObject *type)
{
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &kv_HandleType)) {
        PyErr_SetString(PyExc_TypeError, "a subclass of RecordHandle is needed");
        return NULL;
    }
    Py_INCREF(type);
    Py_XSETREF(kv_handle_type, type);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_handle_type", set_handle_type, METH_O,
     "set_handle_type(cls): what send() returns (a subclass of RecordHandle)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kvlog._accumulator", NULL, -1,
                                    module_methods};

static PyObject *import_attr(const char *module, const char *name)
{
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL)
        return NULL;
    PyObject *attr = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return attr;
}

PyMODINIT_FUNC PyInit__accumulator(void)
{
    if (kv_types_ready() < 0 || PyType_Ready(&kv_AccType) < 0)
        return NULL;
    kv_ProducerClosedError = import_attr("kvlog.errors", "ProducerClosedError");
    kv_InvalidPartitionsError = import_attr("kvlog.errors", "InvalidPartitionsError");
    kv_SerializationError = import_attr("kvlog.errors", "SerializationError");
    kv_event_type = import_attr("threading", "Event");
    kv_cbor_loads = import_attr("cbor2", "loads");
    PyObject *get_logger = import_attr("logging", "getLogger");
    kv_logger = get_logger ? PyObject_CallFunction(get_logger, "s", "kvlog.ipc.futures") : NULL;
    Py_XDECREF(get_logger);
    if (!kv_ProducerClosedError || !kv_InvalidPartitionsError || !kv_SerializationError
        || !kv_event_type || !kv_cbor_loads || !kv_logger)
        return NULL;
    kv_s_on_topic = PyUnicode_InternFromString("_on_topic");
    kv_s_choose_sticky = PyUnicode_InternFromString("_choose_sticky");
    kv_s_wait_for_room = PyUnicode_InternFromString("_wait_for_room");
    kv_s_wake = PyUnicode_InternFromString("_wake");
    kv_s_check_timestamp = PyUnicode_InternFromString("_check_timestamp");
    kv_s_topic = PyUnicode_InternFromString("topic");
    kv_s_value = PyUnicode_InternFromString("value");
    kv_s_key = PyUnicode_InternFromString("key");
    kv_s_headers = PyUnicode_InternFromString("headers");
    kv_s_partition = PyUnicode_InternFromString("partition");
    kv_s_timestamp_ms = PyUnicode_InternFromString("timestamp_ms");
    Py_INCREF(&kv_HandleType);
    kv_handle_type = (PyObject *)&kv_HandleType;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Accumulator", (PyObject *)&kv_AccType) < 0
        || PyModule_AddObjectRef(m, "BatchFuture", (PyObject *)&kv_FutureType) < 0
        || PyModule_AddObjectRef(m, "ProducerBatch", (PyObject *)&kv_BatchType) < 0
        || PyModule_AddObjectRef(m, "RecordHandle", (PyObject *)&kv_HandleType) < 0
        || PyModule_AddIntConstant(m, "RECORD_OVERHEAD", RECORD_OVERHEAD) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
