"""Kafka's wire protocol, sans-IO: unmodified Kafka clients talking to kvlog.

Theory of operation. A TCP connection carries length-prefixed frames
(:mod:`.framing`); each request frame has a header (v1, or v2 for flexible versions) and a
body whose types come from kafka-python's generated schemas behind one adapter
(:mod:`.codec`). :class:`.connection.KafkaConnection` turns received bytes into request
events and responses into bytes, h11-style: it never touches a socket, and bad input
surfaces as one exception type, :class:`.framing.KafkaProtocolError`, after which the
connection closes. :mod:`.versions` is the one table of what is served, which also
answers ApiVersions (:mod:`.api_versions`). The socket loop is a process shell's
(``kvlog.workers.kafka_listener``); the handlers behind it call the same cores as the
ZeroMQ shell.
"""
