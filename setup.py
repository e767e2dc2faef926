"""Only here for the optional C accelerators; all metadata lives in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # Kafka's murmur2 sits on the producer's hot path (one call per keyed record).
        # optional=True: without a compiler the pure-Python fallback is used.
        Extension(
            "kvlog._murmur2", ["kvlog/_murmur2.c"], depends=["kvlog/_murmur2.h"], optional=True
        ),
        # Kafka RecordBatch v2 records <-> kvlog columns: the per-record loop of a
        # cross-format read. optional=True like murmur2: kvlog/_kafka_records_py.py is the
        # same code in Python (10-100x slower), so a machine without a compiler
        # still installs and reads every batch.
        Extension("kvlog._kafka_records", ["kvlog/_kafka_records.c"], optional=True),
        # Log compaction's per-record work (the key -> offset map, batch filters);
        # kvlog/_compact_py.py is its pure-Python twin.
        Extension("kvlog._compact", ["kvlog/_compact.c"], optional=True),
        # The producer's per-record path (Producer.send, send_batch): partition, append
        # into the partition's columnar batch, a handle per record. optional=True:
        # ipc/accumulator.py's PyRecordAccumulator does the same in Python.
        Extension(
            "kvlog._accumulator",
            [
                "kvlog/_accumulator.c",
                "kvlog/_acc_entry.c",
                "kvlog/_acc_send.c",
                "kvlog/_acc_send_batch.c",
                "kvlog/_acc_sender.c",
                "kvlog/_acc_batch.c",
            ],
            depends=["kvlog/_accumulator.h", "kvlog/_cbor_columns.h", "kvlog/_murmur2.h"],
            optional=True,
        ),
        # The consumer's per-record path (poll): a native batch's payload indexed in
        # place, ConsumerRecords built from it. optional=True: cbor2 decodes it as before.
        Extension(
            "kvlog._records", ["kvlog/_records.c"], depends=["kvlog/_cbor_columns.h"], optional=True
        ),
    ]
)
