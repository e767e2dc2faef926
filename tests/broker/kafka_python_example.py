"""A kafka-python program, written the way kafka-python's documentation writes it: an
admin creates and describes a topic, producers send raw, keyed and JSON records with
callbacks, and a group consumer reads them and commits each offset by hand.

tests/broker/test_kafka_python_example.py runs it against a kvlog broker after replacing
its import lines, and nothing else, with kvlog's. It takes the bootstrap server as its
argument and prints what it did.
"""

import json
import logging
import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)
BOOTSTRAP = sys.argv[1]

# Create the topic; a second run finds it there.
admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, client_id="example")
try:
    admin.create_topics([NewTopic(name="my-topic", num_partitions=3, replication_factor=1)])
    print("created my-topic")
except TopicAlreadyExistsError:
    print("my-topic exists")
for topic in admin.describe_topics(["my-topic"]):
    print("topic", topic["name"], "partitions", len(topic["partitions"]))
admin.close()

producer = KafkaProducer(bootstrap_servers=[BOOTSTRAP])

# Asynchronous by default
future = producer.send("my-topic", b"raw_bytes")

# Block for 'synchronous' sends
try:
    record_metadata = future.get(timeout=10)
except KafkaError:
    # Decide what to do if produce request failed...
    log.exception("produce failed")
    raise

# Successful result returns assigned partition and offset
print("sent to", record_metadata.topic, record_metadata.partition, record_metadata.offset)

# produce keyed messages to enable hashed partitioning
producer.send("my-topic", key=b"foo", value=b"bar")
producer.flush()
producer.close()

# produce json messages
producer = KafkaProducer(
    bootstrap_servers=[BOOTSTRAP], value_serializer=lambda m: json.dumps(m).encode("ascii")
)
producer.send("my-topic", {"key": "value"})

acked = []


def on_send_success(record_metadata):
    acked.append((record_metadata.partition, record_metadata.offset))


def on_send_error(excp):
    log.error("I am an errback", exc_info=excp)
    # handle exception


# produce asynchronously with callbacks
for i in range(100):
    producer.send("my-topic", {"n": i}).add_callback(on_send_success).add_errback(on_send_error)

# block until all async messages are sent
producer.flush()
producer.close()
print("acked", len(acked))

# consume earliest available messages, commit each one by hand
consumer = KafkaConsumer(
    "my-topic",
    group_id="my-group",
    bootstrap_servers=[BOOTSTRAP],
    auto_offset_reset="earliest",
    enable_auto_commit=False,
    consumer_timeout_ms=5000,
)
count = 0
for message in consumer:
    # message value and key are raw bytes -- decode if necessary!
    count += 1
    tp = TopicPartition(message.topic, message.partition)
    consumer.commit({tp: OffsetAndMetadata(message.offset + 1, None)})
print("consumed", count)
consumer.close()
