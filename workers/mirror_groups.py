"""Group offset translation onto the target (MirrorMaker 2's checkpoints and group sync):
IO around workers/mirror_model.py's :func:`translate_group` and :func:`group_updates`.

For each source group the mirror's ``groups`` pattern names, its committed offsets are
translated through the offset maps and committed to the same group on the target, where
that group has no members (a group already consuming there owns its offsets) and only
forward. Failures are logged at debug and tried again at the next sync.
"""

from __future__ import annotations

import logging
from typing import Any

from kvlog.errors import KvlogError
from kvlog.types import TopicPartition

from .mirror_model import MirrorSpec, OffsetMap, group_updates, tp_key, translate_group

log = logging.getLogger("kvlog.mirror")


def sync_groups(
    spec: MirrorSpec,
    source_admin: Any,
    target_admin: Any,
    maps: dict[TopicPartition, OffsetMap],
    routes: dict[TopicPartition, TopicPartition],
) -> list[str]:
    """Translate the chosen groups' committed offsets onto the target, where the
    group has no members there and is behind (MirrorMaker 2's group offset sync).
    Returns what failed (the next sync tries again; a migration's last one retries)."""
    from kvlog.errors import GroupIdNotFoundError

    failed: list[str] = []
    try:
        groups = [g["group_id"] for g in source_admin.list_groups()]
    except KvlogError as exc:
        log.debug("listing source groups failed: %s", exc.message)
        return [f"listing the source's groups: {exc.message}"]
    for group in sorted(g for g in groups if spec.translates(g)):
        try:
            committed = source_admin.list_group_offsets(group)
            translated = translate_group(committed, maps, routes)
            if not translated:
                continue
            try:
                [desc] = target_admin.describe_groups([group])
                members = desc.get("members") or []
            except GroupIdNotFoundError:
                members = []
            if members:
                continue  # the group runs on the target now: its offsets are its own
            updates = group_updates(translated, target_admin.list_group_offsets(group))
            if updates:
                target_admin.alter_group_offsets(group, updates)
                log.info(
                    "mirror %s: group %s on the target at %s",
                    spec.name,
                    group,
                    {tp_key(tp): o for tp, o in sorted(updates.items())},
                )
        except KvlogError as exc:
            log.debug("group %s: offset sync failed: %s", group, exc.message)
            failed.append(f"group {group}: {exc.message}")
    return failed
