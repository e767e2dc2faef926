/* The producer's record accumulator in C (module kvlog._accumulator): the types shared by
 * _accumulator.c (the accumulator: partitions, open batches, queues, send()) and
 * _acc_batch.c (a batch: its columns and its future; a record's handle).
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

#endif
