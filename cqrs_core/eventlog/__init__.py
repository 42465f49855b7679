"""The event log: the append-only store and the gap-free reader."""
