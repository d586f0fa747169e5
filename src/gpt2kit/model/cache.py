"""Key/value caches for incremental decoding.

Both kinds keep, per layer, keys and values of shape (B, nh, S, hs) and expose the same small interface:
`update(layer_idx, k, v)` appends the new positions and returns everything cached so far for that layer,
`cache[i]` is layer i's (key, value), `get_seq_length()` the number of cached positions.

- DynamicCache grows by concatenation. It is what a plain `forward(use_cache=True)` returns, like
  transformers 4.57, and it round-trips the legacy tuple-of-(key, value) form.
- StaticCache preallocates max_length positions once (gpt-fast's design): a decode step writes one slice in
  place and reads a view, with no allocation or copy of the past per step. generate() uses it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.utils._pytree as pytree

from gpt2kit.model.outputs import _register_pytree

LegacyCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]


class Cache:
    """The interface GPT2Model talks to; see the module docstring."""

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def get_seq_length(self, layer_idx: int = 0) -> int:
        raise NotImplementedError

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self[i] for i in range(len(self)))

    def to_legacy_cache(self) -> LegacyCache:
        """The pre-Cache form: one (key, value) pair per layer, each (B, nh, S, hs)."""
        return tuple(self[i] for i in range(len(self)))

    def reorder_cache(self, batch_idx: torch.Tensor) -> None:
        """Keep rows batch_idx of every layer (beam search's reshuffle), in place."""
        raise NotImplementedError


class DynamicCache(Cache):
    """A cache that grows with each update; what forward(use_cache=True) returns.

    >>> cache = DynamicCache()
    >>> k, v = cache.update(0, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    >>> cache.get_seq_length(), k.shape
    (3, torch.Size([1, 2, 3, 4]))
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    @classmethod
    def from_legacy_cache(cls, past: Sequence[Sequence[torch.Tensor]] | None) -> DynamicCache:
        cache = cls()
        for i, layer in enumerate(past or ()):
            if len(layer) < 2:
                raise ValueError(
                    f"past_key_values[{i}] must be a (key, value) pair, got {len(layer)} tensors"
                )
            cache.keys.append(layer[0])
            cache.values.append(layer[1])
        return cache

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], k], dim=-2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], v], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[-2] if layer_idx < len(self.keys) else 0

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self.keys) <= layer_idx < len(self.keys):
            raise IndexError(f"cache has {len(self.keys)} layers, asked for layer {layer_idx}")
        return self.keys[layer_idx], self.values[layer_idx]

    def __len__(self) -> int:
        return len(self.keys)

    def reorder_cache(self, batch_idx: torch.Tensor) -> None:
        self.keys = [k.index_select(0, batch_idx.to(k.device)) for k in self.keys]
        self.values = [v.index_select(0, batch_idx.to(v.device)) for v in self.values]

    def crop(self, max_length: int) -> None:
        """Drop cached positions beyond max_length."""
        self.keys = [k[..., :max_length, :] for k in self.keys]
        self.values = [v[..., :max_length, :] for v in self.values]


# A pytree node of its per-layer keys and values, so that torch.export can trace a forward that returns one
# (use_cache=True, the default) or takes one as past_key_values.
_register_pytree(
    DynamicCache,
    lambda c: ([c.keys, c.values], None),
    lambda children, _: _cache_of(*children),
    lambda c: ([(pytree.GetAttrKey("keys"), c.keys), (pytree.GetAttrKey("values"), c.values)], None),
)


def _cache_of(keys: list[torch.Tensor], values: list[torch.Tensor]) -> DynamicCache:
    cache = DynamicCache()
    cache.keys, cache.values = list(keys), list(values)
    return cache


class StaticCache(Cache):
    """Preallocated (B, nh, max_length, hs) buffers per layer; updates write in place.

    >>> cache = StaticCache(n_layer=1, batch_size=1, n_head=2, head_dim=4, max_length=8)
    >>> k, v = cache.update(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
    >>> k.shape  # a view of the first 3 of 8 preallocated positions
    torch.Size([1, 2, 3, 4])
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int | Sequence[int],
        head_dim: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        # n_head per layer where head pruning left layers with different head counts
        heads = [n_head] * n_layer if isinstance(n_head, int) else list(n_head)
        assert len(heads) == n_layer, (heads, n_layer)
        self.max_length = max_length
        # empty, not zeros: nothing beyond the filled length is ever read, and zeroing costs a full pass
        self.k = [torch.empty(batch_size, h, max_length, head_dim, dtype=dtype, device=device) for h in heads]
        self.v = [torch.empty(batch_size, h, max_length, head_dim, dtype=dtype, device=device) for h in heads]
        self.lengths = [0] * n_layer  # positions filled, per layer (layers update one after another)

    @classmethod
    def for_model(
        cls, config, batch_size: int, max_length: int, dtype=torch.float32, device=None
    ) -> StaticCache:
        return cls(
            config.n_layer, batch_size, heads_per_layer(config), config.head_dim, max_length, dtype, device
        )

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.lengths[layer_idx]
        end = start + k.shape[-2]
        if end > self.max_length:
            raise ValueError(
                f"StaticCache holds {self.max_length} positions but {end} are needed; "
                "allocate it with a larger max_length"
            )
        self.k[layer_idx][:, :, start:end] = k
        self.v[layer_idx][:, :, start:end] = v
        self.lengths[layer_idx] = end
        return self.k[layer_idx].narrow(2, 0, end), self.v[layer_idx].narrow(2, 0, end)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.lengths[layer_idx]
        return self.k[layer_idx][:, :, :end], self.v[layer_idx][:, :, :end]

    def __len__(self) -> int:
        return len(self.k)

    def reorder_cache(self, batch_idx: torch.Tensor) -> None:
        for buf in (*self.k, *self.v):
            end = self.lengths[0]
            buf[:, :, :end] = buf[:, :, :end].index_select(0, batch_idx.to(buf.device))

    def crop(self, max_length: int) -> None:
        self.lengths = [min(n, max_length) for n in self.lengths]

    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)


def as_cache(past_key_values) -> Cache | None:
    """Accept a Cache, the legacy per-layer (key, value) tuples, or None."""
    if past_key_values is None or isinstance(past_key_values, Cache):
        return past_key_values
    if isinstance(past_key_values, (tuple, list)):
        return DynamicCache.from_legacy_cache(past_key_values)
    if hasattr(past_key_values, "to_legacy_cache"):  # a transformers Cache object
        return DynamicCache.from_legacy_cache(past_key_values.to_legacy_cache())
    raise TypeError(
        f"past_key_values must be a gpt2kit Cache or a tuple of per-layer (key, value) pairs, "
        f"got {type(past_key_values).__name__}"
    )


def heads_per_layer(config) -> list[int]:
    """The attention heads each layer keeps after config.pruned_heads (negative layer numbers count from the
    end, as the model applies them)."""
    pruned: list[set[int]] = [set() for _ in range(config.n_layer)]
    for layer, heads in (config.pruned_heads or {}).items():
        pruned[int(layer)] |= {int(h) for h in heads}
    return [config.n_head - len(p) for p in pruned]
