/* The accumulator's entry for a topic (TopicEntry: its partitions, each one's open batch
 * and queue of closed batches waiting to be sent) and the accumulator's lists: the
 * incomplete batches, a partition's send queue. */
#include "_accumulator.h"

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
int kv_entry_grow(kv_entry *e, Py_ssize_t n)
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

kv_entry *kv_entry_get(kv_acc *self, PyObject *topic, int create)
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
kv_entry *kv_entry_for_tp(kv_acc *self, PyObject *tp, Py_ssize_t *partition, int create)
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
    kv_entry *e = kv_entry_get(self, PyTuple_GET_ITEM(tp, 0), create);
    if (e == NULL)
        return NULL;
    if (p >= e->cap) {
        if (!create) {
            *partition = -1;
            return e;
        }
        if (kv_entry_grow(e, p + 1) < 0)
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

void kv_inc_add(kv_acc *self, kv_batch *b)
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
void kv_inc_remove(kv_acc *self, kv_batch *b)
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
void kv_close_batch(kv_entry *e, kv_batch *b)
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
kv_batch *kv_queue_pop(kv_entry *e, Py_ssize_t p)
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
