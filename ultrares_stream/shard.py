"""Deterministic assignment of cameras to N replicas (one GPU / pod each).

Every replica of a StatefulSet runs ``ultrares serve --shard-index I --shard-count N`` on the
same config and keeps only the cameras this module gives to replica ``I``; so each camera has
exactly one owner, without any coordination between the pods.

Method: rendezvous (highest-random-weight) hashing with bounded loads.

* Each (camera, replica) pair gets a weight from a process-independent hash
  (BLAKE2b of ``"name/replica"``; Python's ``hash()`` is salted per process, so never that).
* Pure rendezvous hashing gives each camera to its highest-weight replica. That is perfectly
  stable (adding a camera moves nobody) but only balanced on average: with 8 cameras on
  4 GPUs one GPU often gets 4 and another 0, and a GPU is a hard capacity.
* So loads are bounded: every replica gets ``floor(n/N)`` or ``ceil(n/N)`` cameras (at most
  ``n % N`` replicas get the larger share). Pairs are taken in descending weight order over
  all cameras, and a camera goes to the first replica in that order that still has room.
  This is independent of the order cameras are listed in, reduces to pure rendezvous hashing
  when there is room everywhere, and when a camera is added only the few cameras that lose
  their slot to it move (measured in ``tests/test_shard.py``: a handful out of hundreds,
  versus ~all of them for ``index % N``).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .errors import UserError
from .sizes import is_decimal

if TYPE_CHECKING:
    from .config import CameraConfig, ServiceConfig


def weight(name: str, replica: int) -> int:
    """Rendezvous weight of ``name`` on ``replica``: a 64-bit integer, the same in every process."""
    digest = hashlib.blake2b(f"{name}/{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def check_replicas(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(f"replica count must be a whole number >= 1, not {count!r}")
    return count


def capacities(cameras: int, replicas: int) -> tuple[int, int]:
    """(largest share, how many replicas may take it): shares differ by at most one camera."""
    base, extra = divmod(cameras, replicas)
    return (base + 1, extra) if extra else (base, replicas)


def assign(names: Iterable[str], replicas: int) -> dict[int, list[str]]:
    """Cameras of each replica ``0..replicas-1`` (every replica present, names sorted).

    Deterministic (same result in every process and whatever the input order), balanced
    (sizes differ by at most one) and stable (adding a camera moves only a few others).
    """
    check_replicas(replicas)
    unique = sorted(set(names))  # a name is one camera, listed once or twice
    big, big_slots = capacities(len(unique), replicas)
    small = big - 1 if big_slots < replicas else big
    pairs = sorted(((weight(n, r), n, r) for n in unique for r in range(replicas)), reverse=True)
    owner: dict[str, int] = {}
    load = [0] * replicas
    full_at_big = 0
    for _, name, r in pairs:
        if name in owner:
            continue
        cap = big if full_at_big < big_slots else small
        if load[r] >= cap:
            continue
        owner[name] = r
        load[r] += 1
        if load[r] == big and big != small:
            full_at_big += 1
        if len(owner) == len(unique):
            break
    out: dict[int, list[str]] = {r: [] for r in range(replicas)}
    for name in unique:
        out[owner[name]].append(name)
    return out


def owner_of(name: str, names: Iterable[str], replicas: int) -> int:
    """The replica that owns camera ``name`` among ``names``."""
    for r, members in assign(names, replicas).items():
        if name in members:
            return r
    raise UserError(f"camera {name!r} is not in the list")


def check_shard(index: int, count: int) -> None:
    check_replicas(count)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise UserError(f"shard index must be between 0 and {count - 1} (shard count {count}), not {index!r}")


def shard_of(config: ServiceConfig, index: int, count: int) -> list[CameraConfig]:
    """The enabled cameras of ``config`` that replica ``index`` of ``count`` serves, in config order.

    Disabled cameras are not sharded (they take no GPU time), so enabling one may move a few.
    """
    check_shard(index, count)
    enabled = [c for c in config.cameras if c.enabled]
    mine = set(assign((c.name for c in enabled), count)[index])
    return [c for c in enabled if c.name in mine]


def parse_ordinal(pod_name: str) -> int:
    """StatefulSet ordinal from a pod name: ``ultrares-3`` -> 3."""
    head, _, tail = pod_name.rpartition("-")
    if not head or not is_decimal(tail):
        raise UserError(f"{pod_name!r} is not a StatefulSet pod name (NAME-ORDINAL)")
    return int(tail)


def moved(before: dict[int, Sequence[str]], after: dict[int, Sequence[str]]) -> set[str]:
    """Cameras present in both assignments whose owner changed."""
    old = {n: r for r, ns in before.items() for n in ns}
    new = {n: r for r, ns in after.items() for n in ns}
    return {n for n in old.keys() & new.keys() if old[n] != new[n]}
