/* send_batch()'s path (append_records): the records of one call, each placed as send()
 * places it (_acc_send.c), or, for keyed records on a topic of many partitions, grouped
 * by partition first. */
#include "_accumulator.h"

#include "_murmur2.h"

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
        /* Python code may run in kv_ensure_room (waiting for buffer.memory): re-read the
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
        if (kv_ensure_room(self, size) < 0)
            goto done;
        int filled = kv_put_record(self, e, p, ts, kdata, klen, vdata, vlen, NULL, 0, size,
                                   now, &landed, &delta);
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
        if (filled && kv_wants_yield(self, e, p))
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

PyObject *acc_append_records(kv_acc *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"topic", "values", "keys", "partition", "timestamp", "now", NULL};
    PyObject *topic, *values, *keys, *partition;
    long long ts;
    double now;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOLd:append_records", kwlist, &topic, &values, &keys, &partition,
                          &ts, &now))
        return NULL;
    if (self->closed) {
        PyErr_SetString(kv_ProducerClosedError, "the producer is closed; create a new one");
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
    kv_entry *e = kv_entry_for_send(self, topic);
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
            PyErr_Format(kv_InvalidPartitionsError,
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
        kv_field kf = {.has_view = 0, .obj = NULL}, vf;
        const char *kdata = NULL, *vdata;
        Py_ssize_t klen = -1, vlen;
        if (ks != NULL && kv_field_get(&kf, PySequence_Fast_GET_ITEM(ks, i), self->raw_keys,
                                       self->key_serializer, "key", &kdata, &klen) < 0)
            goto fail_e;
        if (kv_field_get(&vf, PySequence_Fast_GET_ITEM(vs, i), self->raw_values,
                         self->value_serializer, "value", &vdata, &vlen) < 0) {
            kv_field_release(&kf);
            goto fail_e;
        }
        Py_ssize_t size = RECORD_OVERHEAD + (klen > 0 ? klen : 0) + (vlen > 0 ? vlen : 0);
        long p = fixed;
        int ok = 1;
        if (p < 0 && klen >= 0)
            p = kafka_partition((const unsigned char *)kdata, klen, count);
        else if (p < 0) {
            if ((e->sticky < 0 || e->sticky >= count) && kv_call_sticky(self, e, count, -1) < 0)
                ok = 0;
            p = e->sticky;
        }
        kv_batch *landed = NULL;
        Py_ssize_t delta = 0;
        int filled = -1;
        if (ok && kv_ensure_room(self, size) == 0)
            filled = kv_put_record(self, e, p, ts, kdata, klen, vdata, vlen, NULL, 0, size,
                                   now, &landed, &delta);
        kv_field_release(&kf);
        kv_field_release(&vf);
        if (filled < 0 || land(&l, landed, i, delta) < 0)
            goto fail_e;
        if (filled) {
            if (kv_wants_yield(self, e, p))
                l.any_yield = 1;
            if (fixed < 0 && klen < 0 && e->sticky == p && kv_call_sticky(self, e, count, p) < 0)
                goto fail_e;
        }
    }
    out = Py_BuildValue("(OOO)", l.batches, batch_of, deltas);
    /* Full batches go now; new ones start their linger.ms clock. */
    if (out != NULL && PyList_GET_SIZE(l.batches) && kv_call_hook(self, kv_s_wake, NULL) < 0)
        Py_CLEAR(out);
    if (out != NULL && l.any_yield && !self->stalled && !self->closed)
        kv_yield_to_sender(self); /* any_yield: kv_wants_yield held for one of the batches */
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
