/* The producer's record accumulator in C (module kvlog._accumulator): the types and
 * functions shared by its files, one job each:
 *   _accumulator.c    the module and the Accumulator type: configuration, metadata,
 *                     life cycle, method table, module init (its comment explains the whole);
 *   _acc_entry.c      a topic's entry (its partitions' open batches and send queues) and
 *                     the accumulator's lists;
 *   _acc_send.c       the record path: send() and append(), one record at a time;
 *   _acc_send_batch.c send_batch()'s path (append_records), keyed records grouped by
 *                     partition when that is safe;
 *   _acc_sender.c     the I/O thread's side: ready, drain, requeue, complete, expire;
 *   _acc_batch.c      a batch: its columns and its future; a record's handle.
 *
 * Everything here runs with the GIL held, and no Python code runs between a check and
 * the change it allows: that is the accumulator's lock. Python code (hooks, serializers,
 * callbacks) is only called before a record's state changes begin or after they end. */
#ifndef KVLOG_ACCUMULATOR_H
#define KVLOG_ACCUMULATOR_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>

#include "_cbor_columns.h"

/* Accounting per record beyond its key and value (ipc/accumulator.py RECORD_OVERHEAD). */
#define RECORD_OVERHEAD 12

/* A batch's future: completed once by the I/O thread, waited on by any thread. */
typedef struct {
    PyObject_HEAD
    int done;
    long long base_offset;
    long long log_start_offset;
    PyObject *error;     /* the exception, or NULL */
    PyObject *event;     /* a threading.Event, made when a thread waits before completion */
    PyObject *callbacks; /* list, or NULL */
    PyObject *weakreflist;
} kv_future;

struct kv_entry;

enum { BATCH_OPEN = 0, BATCH_QUEUED = 1, BATCH_TAKEN = 2 };

/* One partition's batch from its first record to its acknowledgement; it is its own
 * future. Owned by the accumulator until complete(); the I/O thread sets the sequencing
 * fields. */
typedef struct kv_batch {
    kv_future future;
    PyObject *tp;      /* TopicPartition */
    PyObject *encoded; /* bytes (the sender's), or NULL */
    PyObject *payload; /* the CBOR columns once built (a closed batch's, cached) */
    double created;
    double deadline;
    double retry_at;
    long long first_timestamp;
    long long max_timestamp;
    long long base_sequence;
    int producer_epoch;
    int attempts;
    Py_ssize_t size;  /* accounting bytes */
    Py_ssize_t count; /* records */
    struct kv_entry *entry; /* strong reference while the accumulator holds the batch */
    Py_ssize_t partition;
    int state;
    int incomplete;             /* on the accumulator's incomplete list */
    struct kv_batch *qnext;     /* partition queue */
    struct kv_batch *iprev, *inext; /* incomplete list */
    /* The columns as they will be encoded (see _cbor_columns.h). */
    cbor_buf ts;
    cbor_buf keys;
    cbor_buf values;
    cbor_buf headers;
    unsigned long long landed_call; /* append_records: the call that last landed here */
    Py_ssize_t landed_index;        /* and this batch's index in that call's batches */
    int ts_nonzero;  /* some timestamp delta is not 0: the column is an array */
    int has_headers; /* the headers column exists */
} kv_batch;

/* What the accumulator knows of one topic. Partitions only grow; slots stay. */
typedef struct kv_entry {
    PyObject_HEAD
    PyObject *name; /* str */
    PyObject *tps;  /* list of TopicPartition, len >= count */
    Py_ssize_t count;
    Py_ssize_t cap;
    kv_batch **open;  /* [cap]: the open batch of each partition (strong) or NULL */
    kv_batch **qhead; /* [cap]: closed batches waiting to be sent (strong refs) */
    kv_batch **qtail;
    Py_ssize_t *qlen;
    long sticky; /* the sticky partition for unkeyed records, -1: none yet */
    long long version;
} kv_entry;

/* The accumulator (kvlog._accumulator.Accumulator; ipc/accumulator.py subclasses it). */
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

extern PyTypeObject kv_FutureType;
extern PyTypeObject kv_BatchType;
extern PyTypeObject kv_HandleType;
extern PyTypeObject kv_EntryType;

/* Module state (one interpreter). */
extern PyObject *kv_handle_type;  /* FutureRecordMetadata (a subclass of RecordHandle) */
extern PyObject *kv_event_type;   /* threading.Event */
extern PyObject *kv_logger;       /* logging.getLogger("kvlog.ipc.futures") */
extern PyObject *kv_cbor_loads;   /* cbor2.loads (tests and debugging only) */

kv_batch *kv_batch_new(kv_entry *entry, Py_ssize_t partition, double now, double deadline);
/* Append one record (room reserved inside; on failure the batch is unchanged). headers:
 * its CBOR entry (an array of [name, value] pairs), hkind 0 = None, 1 = an empty list,
 * 2 = pairs. */
int kv_batch_append(kv_batch *b, long long timestamp, const char *key, Py_ssize_t klen,
                    const char *value, Py_ssize_t vlen, const cbor_buf *headers, int hkind,
                    Py_ssize_t size);
PyObject *kv_batch_payload(kv_batch *b);
PyObject *kv_handle_new(PyObject *batch, Py_ssize_t delta, PyObject *topic, long partition,
                        long long timestamp, Py_ssize_t key_size, Py_ssize_t value_size);
int kv_types_ready(void);

/* Module state, set by PyInit__accumulator (_accumulator.c). */
extern PyObject *kv_ProducerClosedError, *kv_InvalidPartitionsError, *kv_SerializationError;
/* Interned names: the Python subclass's hooks, send()'s keyword arguments. */
extern PyObject *kv_s_on_topic, *kv_s_choose_sticky, *kv_s_wait_for_room, *kv_s_wake,
    *kv_s_check_timestamp;
extern PyObject *kv_s_topic, *kv_s_value, *kv_s_key, *kv_s_headers, *kv_s_partition,
    *kv_s_timestamp_ms;

/* _acc_entry.c: topic entries and the accumulator's lists. */
int kv_entry_grow(kv_entry *e, Py_ssize_t n);
kv_entry *kv_entry_get(kv_acc *self, PyObject *topic, int create);
kv_entry *kv_entry_for_tp(kv_acc *self, PyObject *tp, Py_ssize_t *partition, int create);
void kv_inc_add(kv_acc *self, kv_batch *b);
void kv_inc_remove(kv_acc *self, kv_batch *b);
void kv_close_batch(kv_entry *e, kv_batch *b);
kv_batch *kv_queue_pop(kv_entry *e, Py_ssize_t p);

/* _acc_send.c: the record path, shared with send_batch's. */

/* A key or value as bytes to copy: its buffer, or len -1 for None. `serializer` is
 * called for anything else (or for everything when `raw` is 0); its result must be
 * bytes-like or None. The field holds what must be released after the copy. */
typedef struct {
    Py_buffer view;
    int has_view;
    PyObject *obj; /* the serialized object (strong), or NULL */
} kv_field;

int kv_put_record(kv_acc *self, kv_entry *e, Py_ssize_t p, long long timestamp,
                  const char *key, Py_ssize_t klen, const char *value, Py_ssize_t vlen,
                  const cbor_buf *headers, int hkind, Py_ssize_t size, double now,
                  kv_batch **landed, Py_ssize_t *delta);
int kv_ensure_room(kv_acc *self, Py_ssize_t size);
int kv_field_get(kv_field *f, PyObject *value, int raw, PyObject *serializer, const char *what,
                 const char **data, Py_ssize_t *len);
int kv_call_sticky(kv_acc *self, kv_entry *e, long count, long current);
int kv_call_hook(kv_acc *self, PyObject *name, PyObject *arg);
void kv_yield_to_sender(kv_acc *self);
int kv_wants_yield(kv_acc *self, kv_entry *e, Py_ssize_t p);
kv_entry *kv_entry_for_send(kv_acc *self, PyObject *topic);
/* Inline, as the compiler made it when one file held both paths: send_batch's path
 * (another file) releases two fields per record. */
static inline void kv_field_release(kv_field *f)
{
    if (f->has_view)
        PyBuffer_Release(&f->view);
    f->has_view = 0;
    Py_CLEAR(f->obj);
}

/* The Accumulator's methods, defined beside the code they share, listed in the method
 * table of _accumulator.c. */
PyObject *acc_send(kv_acc *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);
PyObject *acc_append(kv_acc *self, PyObject *args, PyObject *kwargs);
PyObject *acc_append_records(kv_acc *self, PyObject *args, PyObject *kwargs);
PyObject *acc_ready(kv_acc *self, PyObject *arg);
PyObject *acc_drain(kv_acc *self, PyObject *args, PyObject *kwargs);
PyObject *acc_requeue_front(kv_acc *self, PyObject *args, PyObject *kwargs);
PyObject *acc_complete(kv_acc *self, PyObject *arg);
PyObject *acc_expired(kv_acc *self, PyObject *arg);
PyObject *acc_abort_all(kv_acc *self, PyObject *unused);
PyObject *acc_incomplete(kv_acc *self, PyObject *unused);
PyObject *acc_get_has_unsent(kv_acc *self, void *closure);
PyObject *acc_queued(kv_acc *self, PyObject *tp);
PyObject *acc_progress(kv_acc *self, PyObject *unused);
PyObject *acc_sender_thread(kv_acc *self, PyObject *unused);
PyObject *acc_begin_flush(kv_acc *self, PyObject *unused);
PyObject *acc_end_flush(kv_acc *self, PyObject *unused);
PyObject *acc_close(kv_acc *self, PyObject *unused);
PyObject *acc_refuse(kv_acc *self, PyObject *unused);

#endif
