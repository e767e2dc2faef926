"""Fixtures and setup shared by the Kafka-wire tests."""

from __future__ import annotations

import warnings

# kafka-python 3.0 loads its JSON schemas with importlib.resources' legacy calls, once per
# message class at import: import those modules now, with that one warning silenced.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", category=DeprecationWarning, message=r".*(read_text|open_text) is deprecated"
    )
    import kafka.protocol.admin
    import kafka.protocol.consumer
    import kafka.protocol.metadata
    import kafka.protocol.producer
    import kafka.protocol.sasl  # noqa: F401
