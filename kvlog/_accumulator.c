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
 * window, would otherwise wait for the interpreter's switch interval. */
#include "_accumulator.h"

#include <errno.h>
#include <structmember.h>
#include <time.h>

#include "_murmur2.h"

static PyObject *ProducerClosedError, *InvalidPartitionsError, *SerializationError;
static PyObject *s_on_topic, *s_choose_sticky, *s_wait_for_room, *s_wake, *s_check_timestamp;
static PyObject *s_topic, *s_value, *s_key, *s_headers, *s_partition, *s_timestamp_ms;

typedef struct {
    PyObject_HEAD
    Py_ssize_t batch_size;
    Py_ssize_t buffer_memory;
    Py_ssize_t used;
    double linger_s;
    double delivery_timeout_s;
    int flushing;
    int closed;
    int refusing;
    int raw_keys;
    int raw_values;
    PyObject *key_serializer;
    PyObject *value_serializer;
    PyObject *topics; /* str -> kv_entry */
    kv_batch *inc_head, *inc_tail;
    Py_ssize_t inc_count;
    long long version; /* the metadata version the entries were registered at */
    Py_ssize_t yield_batches;
    double yield_timeout_s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned long long progress;
    int stalled;
    int has_sender;   /* the I/O thread said who it is: it never yields to itself */
    pthread_t sender;
    PyObject *weakreflist;
} kv_acc;

static double monotonic_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static long long wall_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* -- topic entries ----------------------------------------------------------------------- */

static int entry_traverse(kv_entry *e, visitproc visit, void *arg)
{
    Py_VISIT(e->name);
    Py_VISIT(e->tps);
    for (Py_ssize_t i = 0; i < e->cap; i++) {
        Py_VISIT((PyObject *)e->open[i]);
        for (kv_batch *b = e->qhead[i]; b != NULL; b = b->qnext)
            Py_VISIT((PyObject *)b);
    }
    return 0;
}

static void entry_drop_batches(kv_entry *e)
{
    for (Py_ssize_t i = 0; i < e->cap; i++) {
        kv_batch *b = e->open[i];
        e->open[i] = NULL;
        Py_XDECREF(b);
        b = e->qhead[i];
        e->qhead[i] = e->qtail[i] = NULL;
        e->qlen[i] = 0;
        while (b != NULL) {
            kv_batch *next = b->qnext;
            b->qnext = NULL;
            Py_DECREF(b);
            b = next;
        }
    }
}

static int entry_clear(kv_entry *e)
{
    Py_CLEAR(e->name);
    Py_CLEAR(e->tps);
    entry_drop_batches(e);
    return 0;
}

static void entry_dealloc(kv_entry *e)
{
    PyObject_GC_UnTrack(e);
    entry_clear(e);
    PyMem_Free(e->open);
    PyMem_Free(e->qhead);
    PyMem_Free(e->qtail);
    PyMem_Free(e->qlen);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

PyTypeObject kv_EntryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvlog._accumulator.TopicEntry",
    .tp_doc = "The accumulator's partitions of one topic (internal).",
    .tp_basicsize = sizeof(kv_entry),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)entry_dealloc,
    .tp_traverse = (traverseproc)entry_traverse,
    .tp_clear = (inquiry)entry_clear,
};

/* Make room for n partitions (new slots empty, their TopicPartition None). */
static int entry_grow(kv_entry *e, Py_ssize_t n)
{
    if (n <= e->cap)
        return 0;
    kv_batch **open = PyMem_Realloc(e->open, n * sizeof(*open));
    if (open == NULL)
        goto nomem;
    e->open = open;
    kv_batch **qhead = PyMem_Realloc(e->qhead, n * sizeof(*qhead));
    if (qhead == NULL)
        goto nomem;
    e->qhead = qhead;
    kv_batch **qtail = PyMem_Realloc(e->qtail, n * sizeof(*qtail));
    if (qtail == NULL)
        goto nomem;
    e->qtail = qtail;
    Py_ssize_t *qlen = PyMem_Realloc(e->qlen, n * sizeof(*qlen));
    if (qlen == NULL)
        goto nomem;
    e->qlen = qlen;
    for (Py_ssize_t i = e->cap; i < n; i++) {
        e->open[i] = e->qhead[i] = e->qtail[i] = NULL;
        e->qlen[i] = 0;
        if (PyList_GET_SIZE(e->tps) <= i && PyList_Append(e->tps, Py_None) < 0)
            return -1;
    }
    e->cap = n;
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

static kv_entry *entry_get(kv_acc *self, PyObject *topic, int create)
{
    kv_entry *e = (kv_entry *)PyDict_GetItemWithError(self->topics, topic);
    if (e != NULL || PyErr_Occurred() || !create)
        return e;
    if (!PyUnicode_Check(topic)) {
        PyErr_Format(PyExc_TypeError, "a topic is a str, not %.100s", Py_TYPE(topic)->tp_name);
        return NULL;
    }
    e = PyObject_GC_New(kv_entry, &kv_EntryType);
    if (e == NULL)
        return NULL;
    memset((char *)e + sizeof(PyObject), 0, sizeof(kv_entry) - sizeof(PyObject));
    e->sticky = -1;
    e->version = LLONG_MIN;
    Py_INCREF(topic);
    e->name = topic;
    e->tps = PyList_New(0);
    PyObject_GC_Track(e);
    if (e->tps == NULL || PyDict_SetItem(self->topics, topic, (PyObject *)e) < 0) {
        Py_DECREF(e);
        return NULL;
    }
    Py_DECREF(e); /* the dict holds it */
    return e;
}

/* The entry and partition slot of a TopicPartition (made on first use: the low-level
 * append API, used by tests and the pure-Python parity checks). */
static kv_entry *entry_for_tp(kv_acc *self, PyObject *tp, Py_ssize_t *partition, int create)
{
    if (!PyTuple_Check(tp) || PyTuple_GET_SIZE(tp) != 2) {
        PyErr_SetString(PyExc_TypeError, "expected a TopicPartition");
        return NULL;
    }
    Py_ssize_t p = PyLong_AsSsize_t(PyTuple_GET_ITEM(tp, 1));
    if (p == -1 && PyErr_Occurred())
        return NULL;
    if (p < 0) {
        PyErr_SetString(PyExc_ValueError, "a partition is >= 0");
        return NULL;
    }
    kv_entry *e = entry_get(self, PyTuple_GET_ITEM(tp, 0), create);
    if (e == NULL)
        return NULL;
    if (p >= e->cap) {
        if (!create) {
            *partition = -1;
            return e;
        }
        if (entry_grow(e, p + 1) < 0)
            return NULL;
    }
    if (create) {
        if (p >= e->count)
            e->count = p + 1;
        if (PyList_GET_ITEM(e->tps, p) == Py_None) {
            Py_INCREF(tp);
            PyList_SetItem(e->tps, p, tp);
        }
    }
    *partition = p;
    return e;
}

/* -- the accumulator's lists ------------------------------------------------------------- */

static void inc_add(kv_acc *self, kv_batch *b)
{
    Py_INCREF(b);
    b->incomplete = 1;
    b->inext = NULL;
    b->iprev = self->inc_tail;
    if (self->inc_tail)
        self->inc_tail->inext = b;
    else
        self->inc_head = b;
    self->inc_tail = b;
    self->inc_count++;
}

/* Returns the reference the list held (the caller drops it). */
static void inc_remove(kv_acc *self, kv_batch *b)
{
    if (b->iprev)
        b->iprev->inext = b->inext;
    else
        self->inc_head = b->inext;
    if (b->inext)
        b->inext->iprev = b->iprev;
    else
        self->inc_tail = b->iprev;
    b->iprev = b->inext = NULL;
    b->incomplete = 0;
    self->inc_count--;
}

/* Move the partition's open batch to the tail of its send queue (the reference moves). */
static void close_batch(kv_entry *e, kv_batch *b)
{
    Py_ssize_t p = b->partition;
    if (e->open[p] == b)
        e->open[p] = NULL;
    b->state = BATCH_QUEUED;
    b->qnext = NULL;
    if (e->qtail[p])
        e->qtail[p]->qnext = b;
    else
        e->qhead[p] = b;
    e->qtail[p] = b;
    e->qlen[p]++;
}

/* Pop the head of a partition's queue (the reference goes to the caller). */
static kv_batch *queue_pop(kv_entry *e, Py_ssize_t p)
{
    kv_batch *b = e->qhead[p];
    e->qhead[p] = b->qnext;
    if (e->qhead[p] == NULL)
        e->qtail[p] = NULL;
    b->qnext = NULL;
    e->qlen[p]--;
    b->state = BATCH_TAKEN;
    return b;
}

/* -- the record path --------------------------------------------------------------------- */

/* One record into partition p of e: no Python code runs here. Sets *landed (borrowed) and
 * *delta; returns 1 when a batch of the partition closed (filled), 0, or -1. */
static int put_record(kv_acc *self, kv_entry *e, Py_ssize_t p, long long timestamp,
                      const char *key, Py_ssize_t klen, const char *value, Py_ssize_t vlen,
                      const cbor_buf *headers, int hkind, Py_ssize_t size, double now,
                      kv_batch **landed, Py_ssize_t *delta)
{
    int filled = 0;
    kv_batch *b = e->open[p];
    if (b != NULL && b->count > 0 && b->size + size > self->batch_size) {
        close_batch(e, b);
        filled = 1;
        b = NULL;
    }
    if (b == NULL) {
        if (now < 0)
            now = monotonic_s();
        b = kv_batch_new(e, p, now, now + self->delivery_timeout_s);
        if (b == NULL)
            return -1;
        e->open[p] = b;
        inc_add(self, b);
    }
    *delta = b->count;
    if (kv_batch_append(b, timestamp, key, klen, value, vlen, headers, hkind, size) < 0)
        return -1;
    self->used += size;
    if (b->size >= self->batch_size) {
        close_batch(e, b);
        filled = 1;
    }
    *landed = b;
    return filled;
}

/* Block (through the _wait_for_room hook) while buffer.memory cannot take `size`. */
static int ensure_room(kv_acc *self, Py_ssize_t size)
{
    while (!self->closed && self->used && self->used + size > self->buffer_memory) {
        PyObject *needed = PyLong_FromSsize_t(size);
        if (needed == NULL)
            return -1;
        PyObject *r = PyObject_CallMethodOneArg((PyObject *)self, s_wait_for_room, needed);
        Py_DECREF(needed);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    if (self->closed) {
        PyErr_SetString(ProducerClosedError, "the producer is closed; create a new one");
        return -1;
    }
    return 0;
}

/* A key or value as bytes to copy: its buffer, or len -1 for None. `serializer` is
 * called for anything else (or for everything when `raw` is 0); its result must be
 * bytes-like or None. *owned receives what must be released after the copy. */
typedef struct {
    Py_buffer view;
    int has_view;
    PyObject *obj; /* the serialized object (strong), or NULL */
} field;

static void field_release(field *f)
{
    if (f->has_view)
        PyBuffer_Release(&f->view);
    f->has_view = 0;
    Py_CLEAR(f->obj);
}

static int field_get(field *f, PyObject *value, int raw, PyObject *serializer, const char *what,
                     const char **data, Py_ssize_t *len)
{
    f->has_view = 0;
    f->obj = NULL;
    if (serializer != NULL && !(raw && (value == Py_None || PyBytes_CheckExact(value)))) {
        value = PyObject_CallOneArg(serializer, value);
        if (value == NULL)
            return -1;
        f->obj = value;
    }
    if (value == Py_None) {
        *data = NULL;
        *len = -1;
        return 0;
    }
    if (PyBytes_Check(value)) {
        *data = PyBytes_AS_STRING(value);
        *len = PyBytes_GET_SIZE(value);
        return 0;
    }
    if (PyObject_GetBuffer(value, &f->view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        PyErr_Format(SerializationError, "the %s serializer returned %.100s, not bytes", what,
                     Py_TYPE(value)->tp_name);
        field_release(f);
        return -1;
    }
    f->has_view = 1;
    *data = f->view.buf;
    *len = f->view.len;
    return 0;
}

/* Headers: an iterable of (name, value) pairs -> one CBOR entry in `out` (an array of
 * [text, bytes] pairs); *size: what they add to the record's accounting. Returns the
 * kind: 1 an empty list, 2 pairs; -1 on error. Names go through str() and values must
 * be bytes-like, as in Producer.send. */
static int encode_headers(PyObject *headers, cbor_buf *out, Py_ssize_t *size)
{
    PyObject *pairs = PySequence_Fast(headers, "headers must be an iterable of (name, value)");
    if (pairs == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(pairs);
    int kind = -1;
    if (cbor_reserve(out, 9) < 0)
        goto done;
    out->len = cbor_put_head(out->data, CBOR_ARRAY, (uint64_t)n) - out->data;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name, *value;
        PyObject *item = PySequence_Fast_GET_ITEM(pairs, i);
        PyObject *pair = PySequence_Fast(item, "a header is a (name, value) pair");
        if (pair == NULL)
            goto done;
        if (PySequence_Fast_GET_SIZE(pair) != 2) {
            PyErr_Format(PyExc_ValueError, "a header is a (name, value) pair, got %zd items",
                         PySequence_Fast_GET_SIZE(pair));
            Py_DECREF(pair);
            goto done;
        }
        name = PyObject_Str(PySequence_Fast_GET_ITEM(pair, 0));
        value = PySequence_Fast_GET_ITEM(pair, 1);
        Py_INCREF(value);
        Py_DECREF(pair);
        if (name == NULL) {
            Py_DECREF(value);
            goto done;
        }
        Py_ssize_t name_len;
        const char *utf8 = PyUnicode_AsUTF8AndSize(name, &name_len);
        Py_buffer view;
        int ok = utf8 != NULL;
        if (ok && !(PyBytes_Check(value) || PyByteArray_Check(value) || PyMemoryView_Check(value))) {
            PyObject *repr = PyObject_Repr(value);
            PyErr_Format(SerializationError,
                         "header values must be bytes, got %.100s %.40U; encode it first "
                         "(e.g. str.encode())",
                         Py_TYPE(value)->tp_name, repr ? repr : Py_None);
            Py_XDECREF(repr);
            ok = 0;
        }
        if (ok && PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0)
            ok = 0;
        if (ok) {
            *size += PyUnicode_GET_LENGTH(name) + view.len + 4;
            if (cbor_reserve(out, 19 + name_len + view.len) < 0) {
                ok = 0;
            } else {
                unsigned char *p = out->data + out->len;
                *p++ = (unsigned char)((CBOR_ARRAY << 5) | 2);
                p = cbor_put_head(p, CBOR_TEXT, (uint64_t)name_len);
                memcpy(p, utf8, (size_t)name_len);
                p = cbor_put_bytes(p + name_len, view.buf, view.len);
                out->len = p - out->data;
            }
            PyBuffer_Release(&view);
        }
        Py_DECREF(name);
        Py_DECREF(value);
        if (!ok)
            goto done;
    }
    kind = n ? 2 : 1;
done:
    Py_DECREF(pairs);
    return kind;
}

static int call_sticky(kv_acc *self, kv_entry *e, long count, long current)
{
    PyObject *r = PyObject_CallMethod((PyObject *)self, "_choose_sticky", "Oll", e->name, count,
                                      current);
    if (r == NULL)
        return -1;
    long p = PyLong_AsLong(r);
    Py_DECREF(r);
    if (p == -1 && PyErr_Occurred())
        return -1;
    if (p < 0 || p >= count) {
        PyErr_Format(PyExc_ValueError, "_choose_sticky gave partition %ld of %ld", p, count);
        return -1;
    }
    e->sticky = p;
    return 0;
}

static int call_hook(kv_acc *self, PyObject *name, PyObject *arg)
{
    PyObject *r = arg ? PyObject_CallMethodOneArg((PyObject *)self, name, arg)
                      : PyObject_CallMethodNoArgs((PyObject *)self, name);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Let the I/O thread have the GIL until it reports progress (see the module comment). */
static void yield_to_sender(kv_acc *self)
{
    unsigned long long seen = self->progress;
    int timed_out = 0;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    long long ns = until.tv_nsec + (long long)(self->yield_timeout_s * 1e9);
    until.tv_sec += ns / 1000000000;
    until.tv_nsec = ns % 1000000000;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    while (self->progress == seen) {
        if (pthread_cond_timedwait(&self->cv, &self->mu, &until) == ETIMEDOUT) {
            timed_out = self->progress == seen;
            break;
        }
    }
    pthread_mutex_unlock(&self->mu);
    Py_END_ALLOW_THREADS
    if (timed_out)
        self->stalled = 1; /* no more waiting until the sender moves again */
}

static int wants_yield(kv_acc *self, kv_entry *e, Py_ssize_t p)
{
    return self->yield_batches > 0 && !self->stalled && !self->closed
           && e->qlen[p] >= self->yield_batches
           && !(self->has_sender && pthread_equal(self->sender, pthread_self()));
}

/* The timestamp of a record: now, or one the caller gave (checked). */
static int get_timestamp(kv_acc *self, PyObject *given, long long *out)
{
    if (given == Py_None) {
        *out = wall_ms();
        return 0;
    }
    if (PyLong_CheckExact(given)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(given, &overflow);
        if (!overflow && v >= 0) {
            *out = v;
            return 0;
        }
        PyErr_Clear();
    }
    PyObject *r = PyObject_CallMethodOneArg((PyObject *)self, s_check_timestamp, given);
    if (r == NULL)
        return -1;
    *out = PyLong_AsLongLong(r);
    Py_DECREF(r);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* The entry of a topic as send() needs it: registered at the current metadata version. */
static kv_entry *entry_for_send(kv_acc *self, PyObject *topic)
{
    kv_entry *e = entry_get(self, topic, 0);
    if (e != NULL && e->version == self->version && e->count > 0)
        return e;
    if (PyErr_Occurred() || call_hook(self, s_on_topic, topic) < 0)
        return NULL;
    e = entry_get(self, topic, 0);
    if (e == NULL || e->count <= 0) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "topic %R was not registered", topic);
        return NULL;
    }
    return e;
}

static PyObject *acc_send(kv_acc *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    PyObject *v[6] = {NULL, Py_None, Py_None, Py_None, Py_None, Py_None};
    if (nargs > 6) {
        PyErr_SetString(PyExc_TypeError, "send() takes at most 6 arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        v[i] = args[i];
    if (kwnames != NULL) {
        PyObject *names[6] = {s_topic, s_value, s_key, s_headers, s_partition, s_timestamp_ms};
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); k++) {
            PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
            int slot = -1;
            for (int j = 0; j < 6 && slot < 0; j++)
                if (kw == names[j])
                    slot = j;
            for (int j = 0; j < 6 && slot < 0; j++)
                if (PyUnicode_Compare(kw, names[j]) == 0)
                    slot = j;
            if (slot < 0) {
                PyErr_Format(PyExc_TypeError, "send() got an unexpected keyword argument %R", kw);
                return NULL;
            }
            if (slot < nargs) {
                PyErr_Format(PyExc_TypeError, "send() got multiple values for argument %R", kw);
                return NULL;
            }
            v[slot] = args[nargs + k];
        }
    }
    PyObject *topic = v[0], *value = v[1], *key = v[2], *headers = v[3], *partition = v[4];
    if (topic == NULL) {
        PyErr_SetString(PyExc_TypeError, "send() missing required argument 'topic'");
        return NULL;
    }
    if (self->refusing) {
        PyErr_SetString(ProducerClosedError, "send() on a closed producer; create a new one");
        return NULL;
    }
    field kf, vf;
    const char *kdata, *vdata;
    Py_ssize_t klen, vlen;
    cbor_buf hbuf = {NULL, 0, 0};
    PyObject *handle = NULL;
    if (field_get(&kf, key, self->raw_keys, self->key_serializer, "key", &kdata, &klen) < 0)
        return NULL;
    if (field_get(&vf, value, self->raw_values, self->value_serializer, "value", &vdata, &vlen)
        < 0) {
        field_release(&kf);
        return NULL;
    }
    int hkind = 0;
    Py_ssize_t size = RECORD_OVERHEAD + (klen > 0 ? klen : 0) + (vlen > 0 ? vlen : 0);
    if (headers != Py_None) {
        int truthy = PyObject_IsTrue(headers);
        if (truthy < 0 || (truthy && (hkind = encode_headers(headers, &hbuf, &size)) < 0))
            goto done;
    }
    kv_entry *e = entry_for_send(self, topic);
    if (e == NULL)
        goto done;
    Py_INCREF(e);
    long count = (long)e->count;
    long p;
    if (partition != Py_None) {
        p = PyLong_AsLong(partition);
        if (p == -1 && PyErr_Occurred())
            goto done_e;
        if (p < 0 || p >= count) {
            PyErr_Format(InvalidPartitionsError,
                         "partition %ld does not exist: topic %R has %ld", p, topic, count);
            goto done_e;
        }
    } else if (klen >= 0) {
        p = kafka_partition((const unsigned char *)kdata, klen, count);
    } else {
        if ((e->sticky < 0 || e->sticky >= count) && call_sticky(self, e, count, -1) < 0)
            goto done_e;
        p = e->sticky;
    }
    long long ts;
    if (get_timestamp(self, v[5], &ts) < 0 || ensure_room(self, size) < 0)
        goto done_e;
    kv_batch *landed;
    Py_ssize_t delta;
    int filled = put_record(self, e, p, ts, kdata, klen, vdata, vlen, &hbuf, hkind, size, -1,
                            &landed, &delta);
    if (filled < 0)
        goto done_e;
    handle = kv_handle_new((PyObject *)landed, delta, e->name, p, ts, klen, vlen);
    if (handle == NULL)
        goto done_e;
    /* The record is in: what follows may run Python code. */
    if (filled && klen < 0 && e->sticky == p && call_sticky(self, e, count, p) < 0)
        Py_CLEAR(handle); /* Kafka's sticky partitioner moves on */
    else if ((filled || delta == 0) && call_hook(self, s_wake, NULL) < 0)
        Py_CLEAR(handle); /* full: send it; new: its linger.ms clock starts */
    else if (filled && wants_yield(self, e, p))
        yield_to_sender(self);
done_e:
    Py_DECREF(e);
done:
    field_release(&kf);
    field_release(&vf);
    cbor_free(&hbuf);
    return handle;
}

/* append(tp, timestamp, key, value, headers, now) -> (batch, delta, filled): one record
 * of already serialized bytes into the given partition (the low-level API). */
static PyObject *acc_append(kv_acc *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"tp", "timestamp", "key", "value", "headers", "now", NULL};
    PyObject *tp, *key, *value, *headers;
    long long ts;
    double now;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OLOOOd:append", kwlist, &tp, &ts, &key, &value, &headers, &now))
        return NULL;
    field kf, vf;
    const char *kdata, *vdata;
    Py_ssize_t klen, vlen;
    cbor_buf hbuf = {NULL, 0, 0};
    PyObject *out = NULL;
    if (field_get(&kf, key, 1, NULL, "key", &kdata, &klen) < 0)
        return NULL;
    if (field_get(&vf, value, 1, NULL, "value", &vdata, &vlen) < 0) {
        field_release(&kf);
        return NULL;
    }
    Py_ssize_t size = RECORD_OVERHEAD + (klen > 0 ? klen : 0) + (vlen > 0 ? vlen : 0);
    int hkind = 0;
    if (headers != Py_None) {
        int truthy = PyObject_IsTrue(headers);
        if (truthy < 0 || (truthy && (hkind = encode_headers(headers, &hbuf, &size)) < 0))
            goto done;
        if (!truthy)
            hkind = 1; /* an empty list: [] in a headers column that exists */
    }
    if (self->closed) {
        PyErr_SetString(ProducerClosedError, "the producer is closed; create a new one");
        goto done;
    }
    if (ensure_room(self, size) < 0)
        goto done;
    Py_ssize_t p;
    kv_entry *e = entry_for_tp(self, tp, &p, 1);
    if (e == NULL)
        goto done;
    kv_batch *landed;
    Py_ssize_t delta;
    int filled = put_record(self, e, p, ts, kdata, klen, vdata, vlen, &hbuf, hkind, size, now,
                            &landed, &delta);
    if (filled >= 0)
        out = Py_BuildValue("(OnO)", (PyObject *)landed, delta, filled ? Py_True : Py_False);
done:
    field_release(&kf);
    field_release(&vf);
    cbor_free(&hbuf);
    return out;
}

/* Records of one call (send_batch's path) into partitions: `partitions` NULL means pick
 * per record (a key's murmur2, else the sticky partition), else one partition for all.
 * Fills batches[] (unique batches, first touched first), batch_of[i] and deltas[i]. */
typedef struct {
    PyObject *batches; /* list */
    unsigned long long call; /* stamps the batches this call landed in */
    int32_t *batch_of;
    int32_t *deltas;
    int any_yield;
} landing;

static unsigned long long landing_calls = 0;

static int land(landing *l, kv_batch *b, Py_ssize_t i, Py_ssize_t delta)
{
    if (b->landed_call != l->call) { /* first record of this call in this batch */
        b->landed_call = l->call;
        b->landed_index = PyList_GET_SIZE(l->batches);
        if (PyList_Append(l->batches, (PyObject *)b) < 0)
            return -1;
    }
    l->batch_of[i] = (int32_t)b->landed_index;
    l->deltas[i] = (int32_t)delta;
    return 0;
}

/* -- send_batch's keyed records, grouped by partition --------------------------------- */

/* Topics of GROUP_MIN_PARTITIONS to GROUP_MAX_PARTITIONS partitions (and at most
 * GROUP_MAX_SPREAD per record of the call) are grouped with a counting sort. With fewer,
 * every open batch stays in the cache anyway and the extra pass costs ~10 ns a record
 * (16 partitions: 68 -> 79 ns); with more, the count array would cost more than it
 * saves. */
#define GROUP_MIN_PARTITIONS 128
#define GROUP_MAX_PARTITIONS 65536
#define GROUP_MAX_SPREAD 64
#define GROUP_PREFETCH 4

/* Whether append_records may take the grouped path: every key bytes (no serializer call,
 * no sticky partition), every value bytes or None, the partition picked per record. Then
 * nothing a record's placement depends on can change between the records: grouping
 * them moves no record across a batch boundary of its own partition. */
static int groupable(kv_acc *self, PyObject *ks, PyObject *vs, Py_ssize_t n, long count)
{
    if (ks == NULL || n < 2 || count < GROUP_MIN_PARTITIONS || count > GROUP_MAX_PARTITIONS
        || count > GROUP_MAX_SPREAD * n)
        return 0;
    int kraw = self->key_serializer == NULL || self->raw_keys;
    int vraw = self->value_serializer == NULL || self->raw_values;
    if (!kraw || !vraw)
        return 0;
    PyObject **kitems = PySequence_Fast_ITEMS(ks), **vitems = PySequence_Fast_ITEMS(vs);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = vitems[i];
        if (!PyBytes_CheckExact(kitems[i]) || !(v == Py_None || PyBytes_CheckExact(v)))
            return 0;
    }
    return 1;
}

/* The grouped path of append_records (see groupable): the records of one partition go
 * in one after the other, in the call's order, so each touched partition's batch and
 * column tails are fetched from memory once per call instead of once per record (with
 * 1,000 partitions those lines are cold by the time the partition's next record comes:
 * that cost the C append 2 to 3 times its 16-partition time, BENCHMARKS.md). The
 * result is the same as the record-by-record path's: batch_of, deltas, and the batches
 * in the order their first record has in the call. */
static int append_grouped(kv_acc *self, kv_entry *e, PyObject *ks, PyObject *vs, Py_ssize_t n,
                          long count, long long ts, double now, landing *l)
{
    int rc = -1;
    int32_t *part = PyMem_Malloc((size_t)n * sizeof(int32_t));
    int32_t *order = PyMem_Malloc((size_t)n * sizeof(int32_t));
    int32_t *first_run = PyMem_Malloc((size_t)n * sizeof(int32_t));
    PyObject **hashed = PyMem_Malloc((size_t)n * sizeof(PyObject *)); /* strong refs */
    Py_ssize_t nhashed = 0;
    kv_batch **runs = PyMem_Malloc((size_t)n * sizeof(kv_batch *));
    Py_ssize_t *start = PyMem_Calloc((size_t)count + 1, sizeof(Py_ssize_t));
    Py_ssize_t nruns = 0;
    if (part == NULL || order == NULL || first_run == NULL || hashed == NULL || runs == NULL
        || start == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject **kitems = PySequence_Fast_ITEMS(ks);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = hashed[i] = kitems[i];
        Py_INCREF(k); /* alive until the end: the same object is the same key below */
        nhashed++;
        part[i] = (int32_t)kafka_partition((const unsigned char *)PyBytes_AS_STRING(k),
                                           PyBytes_GET_SIZE(k), count);
        start[part[i] + 1]++;
        first_run[i] = -1;
    }
    for (long p = 0; p < count; p++)
        start[p + 1] += start[p];
    for (Py_ssize_t i = 0; i < n; i++) /* stable: a partition's records keep their order */
        order[start[part[i]]++] = (int32_t)i;
    kv_batch *last = NULL;
    for (Py_ssize_t j = 0; j < n; j++) {
        if (j + GROUP_PREFETCH < n) {
            /* The batch a few records on: its lines, while this record is copied; then,
             * two records on (its lines have come by now), its columns' tails. */
            kv_batch *ahead = e->open[part[order[j + GROUP_PREFETCH]]];
            if (ahead != NULL) {
                __builtin_prefetch(ahead, 1);
                __builtin_prefetch((char *)ahead + 64, 1);
                __builtin_prefetch((char *)ahead + 128, 1);
                __builtin_prefetch((char *)ahead + 192, 1);
            }
            kv_batch *near = e->open[part[order[j + GROUP_PREFETCH / 2]]];
            if (near != NULL && near->values.data != NULL) {
                __builtin_prefetch(near->ts.data + near->ts.len, 1);
                __builtin_prefetch(near->keys.data + near->keys.len, 1);
                __builtin_prefetch(near->values.data + near->values.len, 1);
                __builtin_prefetch(near->values.data + near->values.len + 64, 1);
            }
        }
        Py_ssize_t i = order[j];
        /* Python code may run in ensure_room (waiting for buffer.memory): re-read the
         * records from the sequences, as the record-by-record path does. */
        if (i >= PySequence_Fast_GET_SIZE(vs) || i >= PySequence_Fast_GET_SIZE(ks)) {
            PyErr_SetString(PyExc_RuntimeError, "send_batch: the keys or values changed size");
            goto done;
        }
        PyObject *k = PySequence_Fast_GET_ITEM(ks, i), *v = PySequence_Fast_GET_ITEM(vs, i);
        if (!PyBytes_CheckExact(k) || !(v == Py_None || PyBytes_CheckExact(v))) {
            PyErr_SetString(PyExc_RuntimeError, "send_batch: the keys or values changed");
            goto done;
        }
        const char *kdata = PyBytes_AS_STRING(k), *vdata = NULL;
        Py_ssize_t klen = PyBytes_GET_SIZE(k), vlen = -1;
        if (v != Py_None) {
            vdata = PyBytes_AS_STRING(v);
            vlen = PyBytes_GET_SIZE(v);
        }
        /* The same key object as hashed above (bytes do not change): its partition. */
        long p = k == hashed[i] ? part[i]
                                : kafka_partition((const unsigned char *)kdata, klen, count);
        Py_ssize_t size = RECORD_OVERHEAD + klen + (vlen > 0 ? vlen : 0);
        kv_batch *landed = NULL;
        Py_ssize_t delta = 0;
        if (ensure_room(self, size) < 0)
            goto done;
        int filled = put_record(self, e, p, ts, kdata, klen, vdata, vlen, NULL, 0, size, now,
                                &landed, &delta);
        if (filled < 0)
            goto done;
        if (landed != last) { /* a new run: one batch's records, consecutive here */
            Py_INCREF(landed);
            runs[nruns] = landed;
            first_run[i] = (int32_t)nruns++;
            last = landed;
        }
        l->batch_of[i] = (int32_t)(nruns - 1);
        l->deltas[i] = (int32_t)delta;
        if (filled && wants_yield(self, e, p))
            l->any_yield = 1;
    }
    /* Runs in the order of their first record; a batch is one run (its partition's
     * records are consecutive above), so the runs are the call's batches. */
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t r = first_run[i];
        if (r < 0)
            continue;
        order[r] = (int32_t)PyList_GET_SIZE(l->batches);
        if (PyList_Append(l->batches, (PyObject *)runs[r]) < 0)
            goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        l->batch_of[i] = order[l->batch_of[i]];
    rc = 0;
done:
    if (runs != NULL)
        for (Py_ssize_t r = 0; r < nruns; r++)
            Py_DECREF(runs[r]);
    PyMem_Free(part);
    PyMem_Free(order);
    PyMem_Free(first_run);
    for (Py_ssize_t i = 0; i < nhashed; i++)
        Py_DECREF(hashed[i]);
    PyMem_Free(hashed);
    PyMem_Free(runs);
    PyMem_Free(start);
    return rc;
}

static PyObject *acc_append_records(kv_acc *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"topic", "values", "keys", "partition", "timestamp", "now", NULL};
    PyObject *topic, *values, *keys, *partition;
    long long ts;
    double now;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOLd:append_records", kwlist, &topic, &values, &keys, &partition,
                          &ts, &now))
        return NULL;
    if (self->closed) {
        PyErr_SetString(ProducerClosedError, "the producer is closed; create a new one");
        return NULL;
    }
    PyObject *vs = PySequence_Fast(values, "values must be a sequence");
    if (vs == NULL)
        return NULL;
    PyObject *ks = NULL, *out = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(vs);
    if (keys != Py_None) {
        ks = PySequence_Fast(keys, "keys must be a sequence");
        if (ks == NULL) {
            Py_DECREF(vs);
            return NULL;
        }
        if (PySequence_Fast_GET_SIZE(ks) != n) {
            PyErr_Format(PyExc_ValueError, "send_batch: %zd keys for %zd values",
                         PySequence_Fast_GET_SIZE(ks), n);
            goto fail;
        }
    }
    landing l = {PyList_New(0), ++landing_calls, NULL, NULL, 0};
    PyObject *batch_of = PyBytes_FromStringAndSize(NULL, n * 4);
    PyObject *deltas = PyBytes_FromStringAndSize(NULL, n * 4);
    kv_entry *e = entry_for_send(self, topic);
    if (l.batches == NULL || batch_of == NULL || deltas == NULL || e == NULL)
        goto fail_l;
    Py_INCREF(e);
    l.batch_of = (int32_t *)PyBytes_AS_STRING(batch_of);
    l.deltas = (int32_t *)PyBytes_AS_STRING(deltas);
    long count = (long)e->count;
    long fixed = -1;
    if (partition != Py_None) {
        fixed = PyLong_AsLong(partition);
        if (fixed == -1 && PyErr_Occurred())
            goto fail_e;
        if (fixed < 0 || fixed >= count) {
            PyErr_Format(InvalidPartitionsError,
                         "partition %ld does not exist: topic %R has %ld", fixed, topic, count);
            goto fail_e;
        }
    }
    if (fixed < 0 && groupable(self, ks, vs, n, count)) {
        if (append_grouped(self, e, ks, vs, n, count, ts, now, &l) < 0)
            goto fail_e;
        n = 0; /* appended */
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        field kf = {.has_view = 0, .obj = NULL}, vf;
        const char *kdata = NULL, *vdata;
        Py_ssize_t klen = -1, vlen;
        if (ks != NULL && field_get(&kf, PySequence_Fast_GET_ITEM(ks, i), self->raw_keys,
                                    self->key_serializer, "key", &kdata, &klen) < 0)
            goto fail_e;
        if (field_get(&vf, PySequence_Fast_GET_ITEM(vs, i), self->raw_values,
                      self->value_serializer, "value", &vdata, &vlen) < 0) {
            field_release(&kf);
            goto fail_e;
        }
        Py_ssize_t size = RECORD_OVERHEAD + (klen > 0 ? klen : 0) + (vlen > 0 ? vlen : 0);
        long p = fixed;
        int ok = 1;
        if (p < 0 && klen >= 0)
            p = kafka_partition((const unsigned char *)kdata, klen, count);
        else if (p < 0) {
            if ((e->sticky < 0 || e->sticky >= count) && call_sticky(self, e, count, -1) < 0)
                ok = 0;
            p = e->sticky;
        }
        kv_batch *landed = NULL;
        Py_ssize_t delta = 0;
        int filled = -1;
        if (ok && ensure_room(self, size) == 0)
            filled = put_record(self, e, p, ts, kdata, klen, vdata, vlen, NULL, 0, size, now,
                                &landed, &delta);
        field_release(&kf);
        field_release(&vf);
        if (filled < 0 || land(&l, landed, i, delta) < 0)
            goto fail_e;
        if (filled) {
            if (wants_yield(self, e, p))
                l.any_yield = 1;
            if (fixed < 0 && klen < 0 && e->sticky == p && call_sticky(self, e, count, p) < 0)
                goto fail_e;
        }
    }
    out = Py_BuildValue("(OOO)", l.batches, batch_of, deltas);
    /* Full batches go now; new ones start their linger.ms clock. */
    if (out != NULL && PyList_GET_SIZE(l.batches) && call_hook(self, s_wake, NULL) < 0)
        Py_CLEAR(out);
    if (out != NULL && l.any_yield && !self->stalled && !self->closed)
        yield_to_sender(self); /* any_yield: wants_yield held for one of the batches */
fail_e:
    Py_DECREF(e);
fail_l:
    Py_XDECREF(l.batches);
    Py_XDECREF(batch_of);
    Py_XDECREF(deltas);
fail:
    Py_DECREF(vs);
    Py_XDECREF(ks);
    return out;
}

/* -- the I/O thread's side --------------------------------------------------------------- */

typedef struct {
    double created;
    PyObject *tp;
} due_batch;

static int by_age(const void *a, const void *b)
{
    double x = ((const due_batch *)a)->created, y = ((const due_batch *)b)->created;
    return x < y ? -1 : x > y;
}

/* ready(now) -> (tps, next_due): partitions with a closed batch first, then those whose
 * open batch lingered long enough, oldest first: a request holds what fits in
 * max.request.size, and taking the partitions in a fixed order would drain the first
 * ones again and again while the last ones wait (many partitions, small batches). */
static PyObject *acc_ready(kv_acc *self, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t n_due = 0, cap_due = 0;
    due_batch *due_open = NULL;
    int hurry = self->flushing > 0 || self->closed;
    int have_due = 0;
    double next_due = 0;
    Py_ssize_t pos = 0;
    PyObject *k, *value;
    /* Queued batches first, then open ones (as PyRecordAccumulator.ready). */
    for (int pass = 0; pass < 2; pass++) {
        pos = 0;
        while (PyDict_Next(self->topics, &pos, &k, &value)) {
            kv_entry *e = (kv_entry *)value;
            for (Py_ssize_t p = 0; p < e->cap; p++) {
                double due;
                kv_batch *b;
                if (pass == 0) {
                    if ((b = e->qhead[p]) == NULL)
                        continue;
                    due = b->retry_at;
                    if (due <= now) {
                        if (PyList_Append(out, b->tp) < 0)
                            goto fail;
                        continue;
                    }
                } else {
                    if ((b = e->open[p]) == NULL || e->qhead[p] != NULL)
                        continue;
                    due = b->created + self->linger_s;
                    if (hurry || due <= now) {
                        if (n_due == cap_due) {
                            cap_due = cap_due ? 2 * cap_due : 64;
                            due_batch *more = PyMem_Realloc(due_open, cap_due * sizeof(*more));
                            if (more == NULL) {
                                PyErr_NoMemory();
                                goto fail;
                            }
                            due_open = more;
                        }
                        due_open[n_due].created = b->created;
                        due_open[n_due++].tp = b->tp;
                        continue;
                    }
                }
                if (!have_due || due < next_due) {
                    next_due = due;
                    have_due = 1;
                }
            }
        }
    }
    qsort(due_open, (size_t)n_due, sizeof(*due_open), by_age);
    for (Py_ssize_t i = 0; i < n_due; i++)
        if (PyList_Append(out, due_open[i].tp) < 0)
            goto fail;
    PyMem_Free(due_open);
    if (have_due)
        return Py_BuildValue("(Nd)", out, next_due);
    return Py_BuildValue("(NO)", out, Py_None);
fail:
    PyMem_Free(due_open);
    Py_DECREF(out);
    return NULL;
}

static PyObject *acc_drain(kv_acc *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"tp", "now", NULL};
    PyObject *tp;
    double now;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Od:drain", kwlist, &tp, &now))
        return NULL;
    Py_ssize_t p;
    kv_entry *e = entry_for_tp(self, tp, &p, 0);
    if (e == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    if (p < 0)
        Py_RETURN_NONE;
    if (e->qhead[p] != NULL) {
        if (e->qhead[p]->retry_at > now)
            Py_RETURN_NONE;
        return (PyObject *)queue_pop(e, p);
    }
    kv_batch *b = e->open[p];
    if (b == NULL)
        Py_RETURN_NONE;
    if (!(self->flushing || self->closed || b->created + self->linger_s <= now))
        Py_RETURN_NONE;
    e->open[p] = NULL;
    b->state = BATCH_TAKEN;
    return (PyObject *)b;
}

static PyObject *acc_requeue_front(kv_acc *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"batches", "retry_at", NULL};
    PyObject *batches;
    double retry_at;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Od:requeue_front", kwlist, &batches, &retry_at))
        return NULL;
    PyObject *list = PySequence_List(batches);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = PyList_GET_SIZE(list) - 1; i >= 0; i--) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyObject_TypeCheck(item, &kv_BatchType)) {
            PyErr_SetString(PyExc_TypeError, "requeue_front takes this accumulator's batches");
            Py_DECREF(list);
            return NULL;
        }
        kv_batch *b = (kv_batch *)item;
        kv_entry *e = b->entry;
        Py_ssize_t p = b->partition;
        b->retry_at = retry_at;
        if (b->state == BATCH_QUEUED || e == NULL)
            continue; /* already queued */
        Py_INCREF(b);
        b->state = BATCH_QUEUED;
        b->qnext = e->qhead[p];
        e->qhead[p] = b;
        if (e->qtail[p] == NULL)
            e->qtail[p] = b;
        e->qlen[p]++;
    }
    Py_DECREF(list);
    Py_RETURN_NONE;
}

static PyObject *acc_complete(kv_acc *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &kv_BatchType))
        Py_RETURN_FALSE;
    kv_batch *b = (kv_batch *)arg;
    if (!b->incomplete)
        Py_RETURN_FALSE;
    inc_remove(self, b);
    self->used -= b->size;
    Py_DECREF(b);
    Py_RETURN_TRUE;
}

static PyObject *acc_expired(kv_acc *self, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *k, *value;
    for (int pass = 0; pass < 2; pass++) {
        pos = 0;
        while (PyDict_Next(self->topics, &pos, &k, &value)) {
            kv_entry *e = (kv_entry *)value;
            for (Py_ssize_t p = 0; p < e->cap; p++) {
                if (pass == 0) {
                    while (e->qhead[p] != NULL && e->qhead[p]->deadline <= now) {
                        kv_batch *b = queue_pop(e, p);
                        int failed = PyList_Append(out, (PyObject *)b);
                        Py_DECREF(b);
                        if (failed < 0)
                            goto fail;
                    }
                } else if (e->open[p] != NULL && e->open[p]->deadline <= now) {
                    kv_batch *b = e->open[p];
                    e->open[p] = NULL;
                    b->state = BATCH_TAKEN;
                    int failed = PyList_Append(out, (PyObject *)b);
                    Py_DECREF(b);
                    if (failed < 0)
                        goto fail;
                }
            }
        }
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *acc_abort_all(kv_acc *self, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *k, *value;
    for (int pass = 0; pass < 2; pass++) {
        pos = 0;
        while (PyDict_Next(self->topics, &pos, &k, &value)) {
            kv_entry *e = (kv_entry *)value;
            for (Py_ssize_t p = 0; p < e->cap; p++) {
                if (pass == 0) {
                    while (e->qhead[p] != NULL) {
                        kv_batch *b = queue_pop(e, p);
                        int failed = PyList_Append(out, (PyObject *)b);
                        Py_DECREF(b);
                        if (failed < 0)
                            goto fail;
                    }
                } else if (e->open[p] != NULL) {
                    kv_batch *b = e->open[p];
                    e->open[p] = NULL;
                    b->state = BATCH_TAKEN;
                    int failed = PyList_Append(out, (PyObject *)b);
                    Py_DECREF(b);
                    if (failed < 0)
                        goto fail;
                }
            }
        }
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *acc_incomplete(kv_acc *self, PyObject *unused)
{
    PyObject *out = PyList_New(self->inc_count);
    if (out == NULL)
        return NULL;
    Py_ssize_t i = 0;
    for (kv_batch *b = self->inc_head; b != NULL; b = b->inext, i++) {
        Py_INCREF(b);
        PyList_SET_ITEM(out, i, (PyObject *)b);
    }
    return out;
}

static PyObject *acc_get_has_unsent(kv_acc *self, void *closure)
{
    Py_ssize_t pos = 0;
    PyObject *k, *value;
    while (PyDict_Next(self->topics, &pos, &k, &value)) {
        kv_entry *e = (kv_entry *)value;
        for (Py_ssize_t p = 0; p < e->cap; p++)
            if (e->open[p] != NULL || e->qhead[p] != NULL)
                Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *acc_queued(kv_acc *self, PyObject *tp)
{
    Py_ssize_t p;
    kv_entry *e = entry_for_tp(self, tp, &p, 0);
    if (e == NULL && PyErr_Occurred())
        return NULL;
    return PyLong_FromSsize_t(e == NULL || p < 0 ? 0 : e->qlen[p]);
}

static PyObject *acc_progress(kv_acc *self, PyObject *unused)
{
    pthread_mutex_lock(&self->mu);
    self->progress++;
    self->stalled = 0;
    pthread_cond_broadcast(&self->cv);
    pthread_mutex_unlock(&self->mu);
    Py_RETURN_NONE;
}

static PyObject *acc_sender_thread(kv_acc *self, PyObject *unused)
{
    self->sender = pthread_self();
    self->has_sender = 1;
    Py_RETURN_NONE;
}

static PyObject *acc_begin_flush(kv_acc *self, PyObject *unused)
{
    self->flushing++;
    Py_RETURN_NONE;
}

static PyObject *acc_end_flush(kv_acc *self, PyObject *unused)
{
    self->flushing--;
    Py_RETURN_NONE;
}

static PyObject *acc_close(kv_acc *self, PyObject *unused)
{
    self->closed = 1;
    return acc_progress(self, NULL); /* a send() yielding to the sender goes on */
}

static PyObject *acc_refuse(kv_acc *self, PyObject *unused)
{
    self->refusing = 1;
    Py_RETURN_NONE;
}

/* set_topic(topic, tps, version): the topic's partitions as the metadata gives them. */
static PyObject *acc_set_topic(kv_acc *self, PyObject *args)
{
    PyObject *topic, *tps;
    long long version;
    if (!PyArg_ParseTuple(args, "UO!L:set_topic", &topic, &PyList_Type, &tps, &version))
        return NULL;
    kv_entry *e = entry_get(self, topic, 1);
    if (e == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(tps);
    if (entry_grow(e, n) < 0)
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
    kv_entry *e = entry_get(self, topic, 0);
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
        inc_remove(self, b);
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
    ProducerClosedError = import_attr("kvlog.errors", "ProducerClosedError");
    InvalidPartitionsError = import_attr("kvlog.errors", "InvalidPartitionsError");
    SerializationError = import_attr("kvlog.errors", "SerializationError");
    kv_event_type = import_attr("threading", "Event");
    kv_cbor_loads = import_attr("cbor2", "loads");
    PyObject *get_logger = import_attr("logging", "getLogger");
    kv_logger = get_logger ? PyObject_CallFunction(get_logger, "s", "kvlog.ipc.futures") : NULL;
    Py_XDECREF(get_logger);
    if (!ProducerClosedError || !InvalidPartitionsError || !SerializationError || !kv_event_type
        || !kv_cbor_loads || !kv_logger)
        return NULL;
    s_on_topic = PyUnicode_InternFromString("_on_topic");
    s_choose_sticky = PyUnicode_InternFromString("_choose_sticky");
    s_wait_for_room = PyUnicode_InternFromString("_wait_for_room");
    s_wake = PyUnicode_InternFromString("_wake");
    s_check_timestamp = PyUnicode_InternFromString("_check_timestamp");
    s_topic = PyUnicode_InternFromString("topic");
    s_value = PyUnicode_InternFromString("value");
    s_key = PyUnicode_InternFromString("key");
    s_headers = PyUnicode_InternFromString("headers");
    s_partition = PyUnicode_InternFromString("partition");
    s_timestamp_ms = PyUnicode_InternFromString("timestamp_ms");
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
