"""kvlog: a Kafka-style durable event log for one host.

``import kvlog`` is cheap and imports neither ZeroMQ nor any process machinery: an
appliance can embed just the log (``kvlog.LogDir``). The client and broker classes are
re-exported lazily and load their layers on first use::

    import kvlog
    with kvlog.Broker(data_dir="./kvlog-data") as broker:
        producer = kvlog.Producer(bootstrap_servers=broker.bootstrap)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ._version import __version__

# The repository keeps ipc/, workers/ and tools/ beside kvlog/; installed they are
# kvlog.ipc, kvlog.workers and kvlog.tools (setup.cfg package_dir). In a plain checkout
# (PYTHONPATH=. or a non-editable run from the source tree) this finder maps those three
# names to the sibling folders, so the same imports work everywhere. It goes first on
# sys.meta_path: the siblings are those of the kvlog/ that was imported, even when an
# editable install of another checkout (a git worktree's main) is also on the path.
_SIBLINGS = ("ipc", "workers", "tools")
_ROOT = Path(__file__).resolve().parent.parent


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.partition(".")
        if prefix != "kvlog" or name not in _SIBLINGS:
            return None
        init = _ROOT / name / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(init.parent)]
        )


_IN_CHECKOUT = (
    not (Path(__file__).parent / "ipc").is_dir() and (_ROOT / "ipc" / "__init__.py").is_file()
)
if _IN_CHECKOUT and not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _CheckoutFinder())

# name -> module that defines it; imported on first attribute access.
_LAZY = {
    "LogDir": "kvlog.lmdb_store",
    "MemoryLogDir": "kvlog.memory_store",
    "PartitionLog": "kvlog.log",
    "TopicPartition": "kvlog.types",
    "Record": "kvlog.batch",
    "Codec": "kvlog.codecs",
    "ErrorCode": "kvlog.errors",
    "KvlogError": "kvlog.errors",
    "murmur2": "kvlog.partitioner",
    "tune_allocator": "kvlog.allocator",
    "partition_for_key": "kvlog.partitioner",
    "Producer": "kvlog.ipc.producer",
    "RecordMetadata": "kvlog.ipc.producer",
    "Consumer": "kvlog.ipc.consumer",
    "ConsumerRecord": "kvlog.ipc.records",
    "RecordColumns": "kvlog.ipc.records",
    "OffsetAndMetadata": "kvlog.ipc.consumer",
    "ConsumerRebalanceListener": "kvlog.ipc.consumer",
    "Admin": "kvlog.ipc.admin",
    "NewTopic": "kvlog.ipc.admin",
    "Broker": "kvlog.workers.supervisor",
    "ConsumerPool": "kvlog.workers.pool",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kvlog' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
