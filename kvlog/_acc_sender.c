/* The I/O thread's side of the accumulator (ipc/sender.py): which partitions are ready,
 * taking their batches, putting them back for a retry, releasing them, expiring them;
 * and the producer's flush, close and refuse. */
#include "_accumulator.h"

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
PyObject *acc_ready(kv_acc *self, PyObject *arg)
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

PyObject *acc_drain(kv_acc *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"tp", "now", NULL};
    PyObject *tp;
    double now;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Od:drain", kwlist, &tp, &now))
        return NULL;
    Py_ssize_t p;
    kv_entry *e = kv_entry_for_tp(self, tp, &p, 0);
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
        return (PyObject *)kv_queue_pop(e, p);
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

PyObject *acc_requeue_front(kv_acc *self, PyObject *args, PyObject *kwargs)
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

PyObject *acc_complete(kv_acc *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &kv_BatchType))
        Py_RETURN_FALSE;
    kv_batch *b = (kv_batch *)arg;
    if (!b->incomplete)
        Py_RETURN_FALSE;
    kv_inc_remove(self, b);
    self->used -= b->size;
    Py_DECREF(b);
    Py_RETURN_TRUE;
}

/* Take every batch whose deadline is at or before `now` out of the accumulator: queued
 * (closed) ones first, then open ones. abort_all takes them all (now = +inf). */
static PyObject *take_due(kv_acc *self, double now)
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
                    while (e->qhead[p] != NULL && e->qhead[p]->deadline <= now) {
                        kv_batch *b = kv_queue_pop(e, p);
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

PyObject *acc_expired(kv_acc *self, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    return take_due(self, now);
}

PyObject *acc_abort_all(kv_acc *self, PyObject *unused)
{
    return take_due(self, Py_HUGE_VAL);
}

PyObject *acc_incomplete(kv_acc *self, PyObject *unused)
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

PyObject *acc_get_has_unsent(kv_acc *self, void *closure)
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

PyObject *acc_queued(kv_acc *self, PyObject *tp)
{
    Py_ssize_t p;
    kv_entry *e = kv_entry_for_tp(self, tp, &p, 0);
    if (e == NULL && PyErr_Occurred())
        return NULL;
    return PyLong_FromSsize_t(e == NULL || p < 0 ? 0 : e->qlen[p]);
}

PyObject *acc_progress(kv_acc *self, PyObject *unused)
{
    pthread_mutex_lock(&self->mu);
    self->progress++;
    self->stalled = 0;
    pthread_cond_broadcast(&self->cv);
    pthread_mutex_unlock(&self->mu);
    Py_RETURN_NONE;
}

PyObject *acc_sender_thread(kv_acc *self, PyObject *unused)
{
    self->sender = pthread_self();
    self->has_sender = 1;
    Py_RETURN_NONE;
}

PyObject *acc_begin_flush(kv_acc *self, PyObject *unused)
{
    self->flushing++;
    Py_RETURN_NONE;
}

PyObject *acc_end_flush(kv_acc *self, PyObject *unused)
{
    self->flushing--;
    Py_RETURN_NONE;
}

PyObject *acc_close(kv_acc *self, PyObject *unused)
{
    self->closed = 1;
    return acc_progress(self, NULL); /* a send() yielding to the sender goes on */
}

PyObject *acc_refuse(kv_acc *self, PyObject *unused)
{
    self->refusing = 1;
    Py_RETURN_NONE;
}
