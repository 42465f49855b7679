import pickle
import uuid

from cqrs_core.infra.ids import new_uuid4


def test_new_uuid4_is_a_random_version_4_uuid_like_uuid4s():
    seen = set()
    for _ in range(5000):
        u = new_uuid4()
        assert type(u) is uuid.UUID
        assert u.version == 4 and u.variant == uuid.RFC_4122 and u.is_safe is uuid.SafeUUID.unknown
        again = uuid.UUID(str(u))
        assert again == u and hash(again) == hash(u) and again.hex == u.hex and again.bytes == u.bytes
        seen.add(u)
    assert len(seen) == 5000
    assert pickle.loads(pickle.dumps(u)) == u
    # Every bit but the six fixed ones varies.
    ones = zeros = 0
    for v in seen:
        ones |= v.int
        zeros |= ~v.int & ((1 << 128) - 1)
    fixed = (0xF000 << 64) | (0xC000 << 48)
    assert (ones & zeros) == ((1 << 128) - 1) & ~fixed


def test_new_uuid4_never_repeats_across_threads_or_in_a_forked_child():
    import os
    import threading

    made: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def make(into: list[uuid.UUID]) -> None:
        into.extend(new_uuid4() for _ in range(3000))

    threads = [threading.Thread(target=make, args=(m,)) for m in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [u for m in made for u in m]
    assert len(set(every)) == len(every) == 12000

    new_uuid4()  # the parent holds unused random bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then gone
        os.write(write, new_uuid4().bytes)
        os._exit(0)
    os.waitpid(pid, 0)
    child = uuid.UUID(bytes=os.read(read, 16))
    os.close(read)
    os.close(write)
    assert child != new_uuid4()
