"""Random (version 4) UUIDs for the command path, which makes three for every command (its id,
its correlation id, each event's id)."""

from __future__ import annotations

import os
import uuid

# uuid.uuid4() is UUID(bytes=os.urandom(16), version=4); UUID.__init__'s argument checks are
# half of its cost. The same value, set directly: 122 random bits, version 4, RFC 4122 variant.
_RANDOM_BITS = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_VERSION_4 = (4 << 76) | (0x8000 << 48)
_new = object.__new__
_set = object.__setattr__  # UUID is immutable: its own __init__ sets its slots this way too
_UNKNOWN = uuid.SafeUUID.unknown


def new_uuid4() -> uuid.UUID:
    """What `uuid.uuid4()` returns (from os.urandom), in half the time."""
    value = _new(uuid.UUID)
    _set(value, "int", int.from_bytes(os.urandom(16)) & _RANDOM_BITS | _VERSION_4)
    _set(value, "is_safe", _UNKNOWN)
    return value
