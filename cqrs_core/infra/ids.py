"""Random (version 4) UUIDs for the command path, which makes three or four for every command
(its id, its correlation id, a new task's id, each event's id)."""

from __future__ import annotations

import os
import threading
import uuid

# uuid.uuid4() is UUID(bytes=os.urandom(16), version=4); UUID.__init__'s argument checks are
# half of its cost. The same value, set directly: 122 random bits, version 4, RFC 4122 variant.
_RANDOM_BITS = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_VERSION_4 = (4 << 76) | (0x8000 << 48)
_new = object.__new__
_set = object.__setattr__  # UUID is immutable: its own __init__ sets its slots this way too
_UNKNOWN = uuid.SafeUUID.unknown

# os.urandom's bytes, taken 4 KiB (256 ids) at a time instead of one system call per id. Never
# shared with a forked child: it would make the parent's next ids again.
_CHUNK = 4096
_lock = threading.Lock()
_random = b""
_taken = 0


def _forget_in_child() -> None:
    global _lock, _random, _taken
    _lock, _random, _taken = threading.Lock(), b"", 0


os.register_at_fork(after_in_child=_forget_in_child)


def _random_int() -> int:
    global _random, _taken
    with _lock:
        start = _taken
        if start >= len(_random):
            _random, start = os.urandom(_CHUNK), 0
        _taken = start + 16
        return int.from_bytes(_random[start : start + 16])


def new_uuid4() -> uuid.UUID:
    """What `uuid.uuid4()` returns (122 bits from os.urandom), in a third of the time."""
    value = _new(uuid.UUID)
    _set(value, "int", _random_int() & _RANDOM_BITS | _VERSION_4)
    _set(value, "is_safe", _UNKNOWN)
    return value
