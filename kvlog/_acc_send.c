/* The record path: send() (Producer.send) and append() (the low-level API), one record
 * at a time. kv_put_record and the helpers around it (room, serialization, hooks, the
 * yield to the I/O thread) also serve send_batch's path (_acc_send_batch.c). */
#include "_accumulator.h"

#include <errno.h>
#include <time.h>

#include "_murmur2.h"

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

/* One record into partition p of e: no Python code runs here. Sets *landed (borrowed) and
 * *delta; returns 1 when a batch of the partition closed (filled), 0, or -1. */
int kv_put_record(kv_acc *self, kv_entry *e, Py_ssize_t p, long long timestamp,
                  const char *key, Py_ssize_t klen, const char *value, Py_ssize_t vlen,
                  const cbor_buf *headers, int hkind, Py_ssize_t size, double now,
                  kv_batch **landed, Py_ssize_t *delta)
{
    int filled = 0;
    kv_batch *b = e->open[p];
    if (b != NULL && b->count > 0 && b->size + size > self->batch_size) {
        kv_close_batch(e, b);
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
        kv_inc_add(self, b);
    }
    *delta = b->count;
    if (kv_batch_append(b, timestamp, key, klen, value, vlen, headers, hkind, size) < 0)
        return -1;
    self->used += size;
    if (b->size >= self->batch_size) {
        kv_close_batch(e, b);
        filled = 1;
    }
    *landed = b;
    return filled;
}

/* Block (through the _wait_for_room hook) while buffer.memory cannot take `size`. */
int kv_ensure_room(kv_acc *self, Py_ssize_t size)
{
    while (!self->closed && self->used && self->used + size > self->buffer_memory) {
        PyObject *needed = PyLong_FromSsize_t(size);
        if (needed == NULL)
            return -1;
        PyObject *r = PyObject_CallMethodOneArg((PyObject *)self, kv_s_wait_for_room, needed);
        Py_DECREF(needed);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    if (self->closed) {
        PyErr_SetString(kv_ProducerClosedError, "the producer is closed; create a new one");
        return -1;
    }
    return 0;
}

int kv_field_get(kv_field *f, PyObject *value, int raw, PyObject *serializer, const char *what,
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
        PyErr_Format(kv_SerializationError, "the %s serializer returned %.100s, not bytes", what,
                     Py_TYPE(value)->tp_name);
        kv_field_release(f);
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
            PyErr_Format(kv_SerializationError,
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

int kv_call_sticky(kv_acc *self, kv_entry *e, long count, long current)
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

int kv_call_hook(kv_acc *self, PyObject *name, PyObject *arg)
{
    PyObject *r = arg ? PyObject_CallMethodOneArg((PyObject *)self, name, arg)
                      : PyObject_CallMethodNoArgs((PyObject *)self, name);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Let the I/O thread have the GIL until it reports progress (see the module comment
 * in _accumulator.c). */
void kv_yield_to_sender(kv_acc *self)
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

int kv_wants_yield(kv_acc *self, kv_entry *e, Py_ssize_t p)
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
    PyObject *r = PyObject_CallMethodOneArg((PyObject *)self, kv_s_check_timestamp, given);
    if (r == NULL)
        return -1;
    *out = PyLong_AsLongLong(r);
    Py_DECREF(r);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* The entry of a topic as send() needs it: registered at the current metadata version. */
kv_entry *kv_entry_for_send(kv_acc *self, PyObject *topic)
{
    kv_entry *e = kv_entry_get(self, topic, 0);
    if (e != NULL && e->version == self->version && e->count > 0)
        return e;
    if (PyErr_Occurred() || kv_call_hook(self, kv_s_on_topic, topic) < 0)
        return NULL;
    e = kv_entry_get(self, topic, 0);
    if (e == NULL || e->count <= 0) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "topic %R was not registered", topic);
        return NULL;
    }
    return e;
}

PyObject *acc_send(kv_acc *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *v[6] = {NULL, Py_None, Py_None, Py_None, Py_None, Py_None};
    if (nargs > 6) {
        PyErr_SetString(PyExc_TypeError, "send() takes at most 6 arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        v[i] = args[i];
    if (kwnames != NULL) {
        PyObject *names[6] = {kv_s_topic, kv_s_value, kv_s_key,
                              kv_s_headers, kv_s_partition, kv_s_timestamp_ms};
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
        PyErr_SetString(kv_ProducerClosedError, "send() on a closed producer; create a new one");
        return NULL;
    }
    kv_field kf, vf;
    const char *kdata, *vdata;
    Py_ssize_t klen, vlen;
    cbor_buf hbuf = {NULL, 0, 0};
    PyObject *handle = NULL;
    if (kv_field_get(&kf, key, self->raw_keys, self->key_serializer, "key", &kdata, &klen) < 0)
        return NULL;
    if (kv_field_get(&vf, value, self->raw_values, self->value_serializer, "value", &vdata, &vlen)
        < 0) {
        kv_field_release(&kf);
        return NULL;
    }
    int hkind = 0;
    Py_ssize_t size = RECORD_OVERHEAD + (klen > 0 ? klen : 0) + (vlen > 0 ? vlen : 0);
    if (headers != Py_None) {
        int truthy = PyObject_IsTrue(headers);
        if (truthy < 0 || (truthy && (hkind = encode_headers(headers, &hbuf, &size)) < 0))
            goto done;
    }
    kv_entry *e = kv_entry_for_send(self, topic);
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
            PyErr_Format(kv_InvalidPartitionsError,
                         "partition %ld does not exist: topic %R has %ld", p, topic, count);
            goto done_e;
        }
    } else if (klen >= 0) {
        p = kafka_partition((const unsigned char *)kdata, klen, count);
    } else {
        if ((e->sticky < 0 || e->sticky >= count) && kv_call_sticky(self, e, count, -1) < 0)
            goto done_e;
        p = e->sticky;
    }
    long long ts;
    if (get_timestamp(self, v[5], &ts) < 0 || kv_ensure_room(self, size) < 0)
        goto done_e;
    kv_batch *landed;
    Py_ssize_t delta;
    int filled = kv_put_record(self, e, p, ts, kdata, klen, vdata, vlen, &hbuf, hkind, size,
                               -1, &landed, &delta);
    if (filled < 0)
        goto done_e;
    handle = kv_handle_new((PyObject *)landed, delta, e->name, p, ts, klen, vlen);
    if (handle == NULL)
        goto done_e;
    /* The record is in: what follows may run Python code. */
    if (filled && klen < 0 && e->sticky == p && kv_call_sticky(self, e, count, p) < 0)
        Py_CLEAR(handle); /* Kafka's sticky partitioner moves on */
    else if ((filled || delta == 0) && kv_call_hook(self, kv_s_wake, NULL) < 0)
        Py_CLEAR(handle); /* full: send it; new: its linger.ms clock starts */
    else if (filled && kv_wants_yield(self, e, p))
        kv_yield_to_sender(self);
done_e:
    Py_DECREF(e);
done:
    kv_field_release(&kf);
    kv_field_release(&vf);
    cbor_free(&hbuf);
    return handle;
}

/* append(tp, timestamp, key, value, headers, now) -> (batch, delta, filled): one record
 * of already serialized bytes into the given partition (the low-level API). */
PyObject *acc_append(kv_acc *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"tp", "timestamp", "key", "value", "headers", "now", NULL};
    PyObject *tp, *key, *value, *headers;
    long long ts;
    double now;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OLOOOd:append", kwlist, &tp, &ts, &key, &value, &headers, &now))
        return NULL;
    kv_field kf, vf;
    const char *kdata, *vdata;
    Py_ssize_t klen, vlen;
    cbor_buf hbuf = {NULL, 0, 0};
    PyObject *out = NULL;
    if (kv_field_get(&kf, key, 1, NULL, "key", &kdata, &klen) < 0)
        return NULL;
    if (kv_field_get(&vf, value, 1, NULL, "value", &vdata, &vlen) < 0) {
        kv_field_release(&kf);
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
        PyErr_SetString(kv_ProducerClosedError, "the producer is closed; create a new one");
        goto done;
    }
    if (kv_ensure_room(self, size) < 0)
        goto done;
    Py_ssize_t p;
    kv_entry *e = kv_entry_for_tp(self, tp, &p, 1);
    if (e == NULL)
        goto done;
    kv_batch *landed;
    Py_ssize_t delta;
    int filled = kv_put_record(self, e, p, ts, kdata, klen, vdata, vlen, &hbuf, hkind, size,
                               now, &landed, &delta);
    if (filled >= 0)
        out = Py_BuildValue("(OnO)", (PyObject *)landed, delta, filled ? Py_True : Py_False);
done:
    kv_field_release(&kf);
    kv_field_release(&vf);
    cbor_free(&hbuf);
    return out;
}
