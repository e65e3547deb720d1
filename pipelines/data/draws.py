"""Where the random numbers of an augmentation come from (pipelines/data/transforms.py draws every one of them
through a `Draws`):

    GeneratorDraws  a torch.Generator's stream, for a whole batch at once: the `augment` stage's fixed transfer
                    set, the same images for the same seed.
    KeyedDraws      a counter-based hash of (seed, epoch, image row, draw): each image's view in an epoch is a
                    function of those alone, whatever the batch it falls in, the processes, the device or a
                    resumed run, so a training step regenerates it anywhere (fresh views, pipelines/engine/views.py)
                    with no generator state to save.

The hash is Wellons' "lowbias32" on 32-bit words, computed in int64 so that every product fits: the same bits on
CPU and CUDA.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

MASK = 0xFFFFFFFF
GAMMA_ROUNDS = 16  # candidates per image for the Marsaglia-Tsang gamma sampler; each is accepted with p > 0.95


class Draws(Protocol):
    """Random numbers for a batch of `batch` images on `device`, in a fixed order of calls."""

    batch: int
    device: torch.device

    def uniform(self, low: float, high: float) -> torch.Tensor:
        """[batch] floats uniform in [low, high)."""
        ...

    def integers(self, high: int) -> torch.Tensor:
        """[batch] int64 uniform in [0, high)."""
        ...

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal floats of `shape` (whose first dimension is the batch)."""
        ...

    def beta(self, alpha: torch.Tensor) -> torch.Tensor:
        """[batch] draws of Beta(alpha, alpha), one alpha per image."""
        ...

    def discard_normal(self, shape: tuple[int, ...]) -> None:
        """Move past the draws `normal(shape)` would make, when nothing reads them (noise of std 0): the
        draws after it stay the same whether or not the noise is on."""
        ...


class GeneratorDraws:
    """Draws from `generator` on the CPU (moved to `device`); the order of calls is the stream's."""

    def __init__(self, generator: torch.Generator, batch: int, device: torch.device = torch.device("cpu")) -> None:
        self.generator, self.batch, self.device = generator, batch, device
        self._beta: np.random.Generator | None = None

    def start_mix(self) -> None:
        """Beta draws need numpy: its generator is seeded from this stream, so the same seed gives the same mix."""
        self._beta = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=self.generator)))

    def uniform(self, low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(self.batch, generator=self.generator)).to(self.device)

    def integers(self, high: int) -> torch.Tensor:
        return torch.randint(0, high, (self.batch,), generator=self.generator).to(self.device)

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator).to(self.device)

    def discard_normal(self, shape: tuple[int, ...]) -> None:
        torch.randn(shape, generator=self.generator)  # the stream moves on as if the noise were drawn

    def beta(self, alpha: torch.Tensor) -> torch.Tensor:
        assert self._beta is not None, "start_mix draws the numpy seed first"
        values = alpha.cpu().numpy()
        return torch.from_numpy(self._beta.beta(values, values)).float().to(self.device)


class KeyedDraws:
    """Draws that are a hash of (seed, epoch, row, the call's number) for each image's `rows` entry.

    A view makes a few dozen one-word draws per image (an angle, a shift, a share...): their words are hashed
    for SCALAR_CALLS calls at once, one tensor op per step of the hash for all of them, instead of one per call
    (the same bits: a call's word depends only on its number). On small images each hash op costs little more
    than its dispatch, so this is most of what a view costs."""

    SCALAR_CALLS = 16

    def __init__(self, seed: int, epoch: int, rows: torch.Tensor, device: torch.device) -> None:
        self.batch, self.device = len(rows), device
        base = _hash_word(_hash_word(seed & MASK) ^ (epoch & MASK))
        self.keys = _hash((rows.to(device=device, dtype=torch.int64) & MASK) ^ base)  # [batch]
        self.calls = 0
        self._scalar_words: torch.Tensor | None = None  # [batch, SCALAR_CALLS]: the one-word draws of calls
        self._first_scalar_call = 0  # _first_scalar_call, _first_scalar_call + 1, ...

    def start_mix(self) -> None:
        """(Nothing to prepare: every draw is keyed.)"""

    def discard_normal(self, shape: tuple[int, ...]) -> None:
        self.calls += 2  # normal's two calls, whose words nothing reads

    def _words(self, per_image: int) -> torch.Tensor:
        """[batch, per_image] 32-bit words, fresh for each call."""
        self.calls += 1
        if per_image == 1:
            return self._scalar_word(self.calls)
        counters = torch.arange(per_image, dtype=torch.int64, device=self.device)
        call = _hash(self.keys ^ self.calls).unsqueeze(1)
        return _hash(_hash(call ^ counters) + self.calls)

    def _scalar_word(self, call: int) -> torch.Tensor:
        """[batch, 1]: the words of `call` with per_image 1 (counter 0), from the block of calls it falls in."""
        column = call - self._first_scalar_call
        if self._scalar_words is None or not 0 <= column < self.SCALAR_CALLS:
            calls = torch.arange(call, call + self.SCALAR_CALLS, dtype=torch.int64, device=self.device)
            self._scalar_words = _hash(_hash(_hash(self.keys.unsqueeze(1) ^ calls)) + calls)
            self._first_scalar_call, column = call, 0
        return self._scalar_words[:, column:column + 1]

    def _unit(self, per_image: int) -> torch.Tensor:
        """[batch, per_image] floats in [0, 1) (24 bits each, exact in float32)."""
        return (self._words(per_image) >> 8).float() / float(1 << 24)

    def uniform(self, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * self._unit(1)[:, 0]

    def integers(self, high: int) -> torch.Tensor:
        return (self._unit(1)[:, 0] * high).long().clamp_(max=high - 1)

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        per_image = math.prod(shape[1:])
        first, second = self._unit(per_image), self._unit(per_image)
        radius = torch.sqrt(-2.0 * torch.log1p(-first))  # Box-Muller; 1 - u is in (0, 1]
        return (radius * torch.cos(2.0 * math.pi * second)).view(shape)

    def beta(self, alpha: torch.Tensor) -> torch.Tensor:
        first, second = self._gamma(alpha), self._gamma(alpha)
        return first / (first + second).clamp_(min=1e-12)

    def _gamma(self, alpha: torch.Tensor) -> torch.Tensor:
        """Gamma(alpha) by Marsaglia and Tsang, vectorized over GAMMA_ROUNDS candidates per image (the first
        accepted is taken); alpha < 1 through Gamma(alpha + 1) * U^(1 / alpha)."""
        alpha = alpha.to(self.device, torch.float32).clamp(min=1e-6)
        shape = alpha + (alpha < 1).float()
        d = (shape - 1.0 / 3.0).unsqueeze(1)
        c = 1.0 / torch.sqrt(9.0 * d)
        x = self.normal((self.batch, GAMMA_ROUNDS))
        u = self._unit(GAMMA_ROUNDS)
        v = (1.0 + c * x) ** 3
        accepted = (v > 0) & (torch.log1p(-u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp(min=1e-12)))
        first = torch.where(accepted.any(dim=1), accepted.float().argmax(dim=1), GAMMA_ROUNDS - 1)
        gamma = (d * v.clamp(min=1e-12)).gather(1, first.unsqueeze(1)).squeeze(1)
        boost = (1.0 - self._unit(1)[:, 0]) ** (1.0 / alpha)  # in (0, 1]
        return torch.where(alpha < 1, gamma * boost, gamma)


def _hash_word(x: int) -> int:
    """lowbias32 of one word, as `_hash` computes it."""
    x &= MASK
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK
    return x ^ (x >> 16)


def _hash(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 of 32-bit words held in int64 (every product stays below 2^63)."""
    x = x & MASK
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK
    x = x ^ (x >> 15)
    x = ((((x * 0x846C) & 0xFFFF) << 16) + x * 0xA68B) & MASK  # x * 0x846CA68B mod 2^32, in 16-bit halves
    return x ^ (x >> 16)
