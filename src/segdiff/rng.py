"""Counter-based seeding: every random draw is keyed by integers such as (seed, step, sample index).

Results then depend on what is drawn for whom, not on the batch layout, the number of processes, or
where an interrupted run resumed (issue: scale-out; DESIGN habit 5).
"""

from __future__ import annotations

import hashlib

import torch

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def key(*parts: int | str) -> int:
    """A 63-bit seed from integers and strings (strings hashed stably, not with Python's salted hash)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        if isinstance(p, str):
            p = int.from_bytes(hashlib.blake2b(p.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")
        h = _splitmix64(h ^ (int(p) & _MASK))
    return h & ((1 << 63) - 1)


def generator(*parts: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(key(*parts))
    return g


class GenerationNoise:
    """One generator per generation: generation k's noise is the same whether the generations run as
    one batch, in chunks, or one after another (the reference path).

    `randn(shape)` draws [len(generators), *shape] with one draw per generator.
    """

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    @classmethod
    def for_keys(cls, keys: list[tuple], device: torch.device | str) -> GenerationNoise:
        return cls([generator(*k, device=device) for k in keys])

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g, device=device) for g in self.generators])
