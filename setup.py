"""Only here for the optional C accelerator; all metadata lives in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # Kafka's murmur2 sits on the producer's hot path (one call per keyed record).
        # optional=True: without a compiler the pure-Python fallback is used.
        Extension("kvlog._murmur2", ["kvlog/_murmur2.c"], optional=True),
    ]
)
