"""The functional API: what a torchhd user expects to find, on `Hypervectors`.

All operations broadcast over leading (batch) axes like torch does, check that their arguments share one VSA
model, dimension, dtype and device, and raise a TypeError/ValueError naming the argument otherwise.
Randomness is reproducible: pass `seed=` (the same vectors on every device) or a `torch.Generator`.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch

from .device import resolve_device
from .errors import check_positive_int, check_shape
from .hypervectors import Hypervectors
from .vsa import VSAModel, get_model

# ---------------------------------------------------------------------------------------------------------
# argument checks


def _check_hv(x: object, name: str) -> Hypervectors:
    if not isinstance(x, Hypervectors):
        raise TypeError(f"{name} must be Hypervectors (from hd_compute.random, level, ...), got {type(x).__name__}")
    return x


def _check_compatible(a: Hypervectors, b: Hypervectors, name_a: str, name_b: str) -> None:
    _check_hv(a, name_a)
    _check_hv(b, name_b)
    if a.vsa is not b.vsa:
        raise ValueError(f"{name_a} is {a.vsa.name} but {name_b} is {b.vsa.name}; both must use the same VSA model")
    if a.dim != b.dim:
        raise ValueError(f"{name_a} has dim={a.dim} but {name_b} has dim={b.dim}; dimensions must match")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} has dtype {a.dtype} but {name_b} has {b.dtype}; convert one so both match")
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}; move both to one device")


def _broadcast_shape(a: Hypervectors, b: Hypervectors, name_a: str, name_b: str) -> torch.Size:
    try:
        shape: torch.Size = torch.broadcast_shapes(a.shape, b.shape)  # type: ignore[no-untyped-call]  # unannotated in torch
        return shape
    except RuntimeError:
        raise ValueError(
            f"batch shapes of {name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} do not broadcast"
        ) from None


def _random_source(
    seed: int | None, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Generator | None, torch.device]:
    """Returns (generator, device to generate on). A seed generates on CPU so results match on every device."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        return torch.Generator().manual_seed(seed), torch.device("cpu")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device} but device is {device}; they must match")
        return generator, device
    return None, device


# ---------------------------------------------------------------------------------------------------------
# creation


def random(
    num: int | tuple[int, ...],
    dim: int,
    vsa: str | VSAModel = "MAP",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Hypervectors:
    """`num` (a count or a batch shape) random hypervectors of dimension `dim`; quasi-orthogonal for large dim."""
    shape = check_shape(num, "num")
    check_positive_int(dim, "dim")
    model = get_model(vsa)
    storage_dtype = model.storage_dtype(dtype)
    target = resolve_device(device)
    gen, gen_device = _random_source(seed, generator, target)
    data = model.random(shape, dim, storage_dtype, gen, gen_device)
    return Hypervectors(data.to(target), model, dim)


def identity(
    num: int | tuple[int, ...],
    dim: int,
    vsa: str | VSAModel = "MAP",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Hypervectors:
    """Identity hypervectors of binding: bind(x, identity) == x."""
    shape = check_shape(num, "num")
    check_positive_int(dim, "dim")
    model = get_model(vsa)
    return Hypervectors(model.identity(shape, dim, model.storage_dtype(dtype), resolve_device(device)), model, dim)


# ---------------------------------------------------------------------------------------------------------
# algebra


def bind(a: Hypervectors, b: Hypervectors) -> Hypervectors:
    """Binds (associates) a with b; the result is dissimilar to both.

    MAP: product, BSC: XOR, HRR: circular convolution, FHRR: angle addition.
    """
    _check_compatible(a, b, "a", "b")
    _broadcast_shape(a, b, "a", "b")
    return Hypervectors(a.vsa.bind(a.data, b.data, a.dim), a.vsa, a.dim)


def unbind(a: Hypervectors, b: Hypervectors) -> Hypervectors:
    """Recovers x from a = bind(x, b): exact for MAP, BSC and FHRR, approximate for HRR."""
    _check_compatible(a, b, "a", "b")
    _broadcast_shape(a, b, "a", "b")
    return Hypervectors(a.vsa.unbind(a.data, b.data, a.dim), a.vsa, a.dim)


def inverse(x: Hypervectors) -> Hypervectors:
    """The binding inverse (the approximate involution for HRR)."""
    _check_hv(x, "x")
    return Hypervectors(x.vsa.inverse(x.data, x.dim), x.vsa, x.dim)


def bundle(a: Hypervectors, b: Hypervectors) -> Hypervectors:
    """Bundles two hypervectors (equivalent to multiset of the pair); the result is similar to both."""
    _check_compatible(a, b, "a", "b")
    shape = _broadcast_shape(a, b, "a", "b")
    width = a.data.shape[-1]
    stacked = torch.stack([a.data.expand(*shape, width), b.data.expand(*shape, width)], dim=-2)
    return Hypervectors(a.vsa.multiset(stacked, a.dim), a.vsa, a.dim)


def multiset(x: Hypervectors) -> Hypervectors:
    """Bundles the hypervectors along the last batch axis: (..., n) -> (...).

    MAP and BSC take the element-wise majority; ties (possible when n is even) take the value of a fixed
    tie-break vector, so the result is deterministic. HRR sums; FHRR sums and keeps each element's angle.
    """
    _check_hv(x, "x")
    if x.data.dim() < 2:
        raise ValueError("x must have a batch axis to bundle over, got a single hypervector")
    if x.data.shape[-2] == 0:
        raise ValueError("x is an empty batch; multiset needs at least one hypervector")
    return Hypervectors(x.vsa.multiset(x.data, x.dim), x.vsa, x.dim)


def permute(x: Hypervectors, shifts: int = 1) -> Hypervectors:
    """Permutes the dimensions `shifts` times (negative shifts invert); used to encode order.

    MAP, BSC and FHRR shift cyclically; HRR applies a fixed pseudo-random permutation, because a cyclic shift
    commutes with its binding. `shifts` must fit in int64, which bounds HRR's repeated squaring to 64 steps.
    """
    _check_hv(x, "x")
    if isinstance(shifts, bool) or not isinstance(shifts, int):
        raise TypeError(f"shifts must be an int, got {type(shifts).__name__}")
    int64 = torch.iinfo(torch.int64)
    if not int64.min <= shifts <= int64.max:
        raise ValueError(f"shifts must be in [{int64.min}, {int64.max}] (int64), got {shifts}")
    return Hypervectors(x.vsa.permute(x.data, shifts, x.dim), x.vsa, x.dim)


# ---------------------------------------------------------------------------------------------------------
# similarity


def _pairwise(x: Hypervectors, others: Hypervectors, kernel_name: Literal["cosine", "dot", "hamming"]) -> torch.Tensor:
    _check_compatible(x, others, "input", "others")
    if others.data.dim() > 2:
        raise ValueError(f"others must be one hypervector or a 1-D batch (N,), got batch shape {tuple(others.shape)}")
    model = x.vsa
    kernel = {"cosine": model.cosine, "dot": model.dot, "hamming": model.hamming}[kernel_name]
    queries = x.data.reshape(-1, x.data.shape[-1])
    items = others.data.reshape(-1, others.data.shape[-1])
    out = kernel(queries, items, x.dim)
    return out.reshape((*x.shape, *others.shape))  # a tuple: both may be single vectors (shape ())


def cosine_similarity(input: Hypervectors, others: Hypervectors) -> torch.Tensor:
    """Cosine similarity of each input with each of others: (..., ) x (N,) -> (..., N) float32."""
    return _pairwise(input, others, "cosine")


def dot_similarity(input: Hypervectors, others: Hypervectors) -> torch.Tensor:
    """Dot products (of the bipolar view for BSC): exact int32 for MAP-int8 and BSC, float otherwise."""
    return _pairwise(input, others, "dot")


def hamming_similarity(input: Hypervectors, others: Hypervectors) -> torch.Tensor:
    """Number of equal dimensions (D minus the Hamming distance), int32; MAP and BSC only."""
    _check_hv(input, "input")
    if not input.vsa.supports_hamming:
        raise TypeError(f"hamming_similarity is defined for MAP and BSC hypervectors, not {input.vsa.name}")
    return _pairwise(input, others, "hamming")


class CleanupResult(NamedTuple):
    indices: torch.Tensor  # int64, -1 where no item reached the threshold
    similarities: torch.Tensor  # float32 cosine similarity of the best item


def cleanup(query: Hypervectors, memory: Hypervectors, threshold: float = 0.0) -> CleanupResult:
    """Nearest item (cosine) of `memory` for each query; index -1 where the best similarity < threshold."""
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
        raise TypeError(f"threshold must be a finite number, got {threshold!r}")
    _check_compatible(query, memory, "query", "memory")
    if memory.data.dim() != 2 or memory.data.shape[0] == 0:
        raise ValueError(f"memory must be a non-empty 1-D batch of hypervectors, got batch shape {tuple(memory.shape)}")
    similarities = cosine_similarity(query, memory)
    best, indices = similarities.max(dim=-1)
    indices = torch.where(best >= threshold, indices, torch.full_like(indices, -1))
    return CleanupResult(indices, best)


# ---------------------------------------------------------------------------------------------------------
# embeddings (value -> hypervector codebooks)


def _selection_embedding(
    masks: torch.Tensor,
    model: VSAModel,
    dim: int,
    dtype: torch.dtype,
    gen: torch.Generator | None,
    gen_device: torch.device,
    target: torch.device,
) -> Hypervectors:
    """Per dimension, take `high` where masks is True and `low` elsewhere."""
    low = model.random((), dim, dtype, gen, gen_device)
    high = model.random((), dim, dtype, gen, gen_device)
    num = masks.shape[0]
    data = model.select(masks, high.expand(num, *high.shape), low.expand(num, *low.shape))
    return Hypervectors(data.to(target), model, dim)


def level(
    num: int,
    dim: int,
    vsa: str | VSAModel = "MAP",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Hypervectors:
    """`num` level hypervectors for ordered values: neighbours are similar, the two ends quasi-orthogonal.

    Each dimension flips from a random `low` vector to a random `high` vector at its own random threshold,
    so the expected similarity falls linearly with the distance between levels.
    """
    check_positive_int(num, "num")
    check_positive_int(dim, "dim")
    model = get_model(vsa)
    storage_dtype = model.storage_dtype(dtype)
    target = resolve_device(device)
    gen, gen_device = _random_source(seed, generator, target)
    thresholds = torch.rand(dim, generator=gen, device=gen_device)
    positions = torch.linspace(0, 1, num, device=gen_device) if num > 1 else torch.zeros(1, device=gen_device)
    masks = thresholds.unsqueeze(0) < positions.unsqueeze(1)
    return _selection_embedding(masks, model, dim, storage_dtype, gen, gen_device, target)


def circular(
    num: int,
    dim: int,
    vsa: str | VSAModel = "MAP",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Hypervectors:
    """`num` hypervectors for values on a circle (angles, hours): similarity falls with circular distance,
    opposite points are quasi-orthogonal and the last level is as close to the first as to its other neighbour.
    """
    check_positive_int(num, "num")
    check_positive_int(dim, "dim")
    model = get_model(vsa)
    storage_dtype = model.storage_dtype(dtype)
    target = resolve_device(device)
    gen, gen_device = _random_source(seed, generator, target)
    starts = torch.rand(dim, generator=gen, device=gen_device)
    phases = torch.arange(num, device=gen_device, dtype=torch.float32) / num
    offset = (phases.unsqueeze(1) - starts.unsqueeze(0)) % 1.0
    # Each dimension is `high` on its own half of the circle: at circular distance d (in turns, <= 1/2) a
    # fraction 2d of the dimensions differ, so similarity is ~1 - 2d and opposite points are quasi-orthogonal.
    masks = offset < 0.5
    return _selection_embedding(masks, model, dim, storage_dtype, gen, gen_device, target)


def thermometer(
    num: int,
    dim: int,
    vsa: str | VSAModel = "MAP",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Hypervectors:
    """`num` deterministic thermometer codes: level i has its first round(i * D / (num - 1)) dimensions at -1
    (bit 1 for BSC) and the rest at +1; level 0 and level num-1 are opposite."""
    check_positive_int(num, "num")
    check_positive_int(dim, "dim")
    model = get_model(vsa)
    storage_dtype = model.storage_dtype(dtype)
    target = resolve_device(device)
    if num == 1:
        counts = torch.zeros(1, device=target)
    else:
        counts = torch.round(torch.arange(num, device=target, dtype=torch.float64) * dim / (num - 1))
    bipolar = torch.where(torch.arange(dim, device=target).unsqueeze(0) < counts.unsqueeze(1), -1.0, 1.0)
    if model.name == "HRR":
        dense = bipolar / math.sqrt(dim)
    elif model.name == "FHRR":
        dense = torch.complex(bipolar, torch.zeros_like(bipolar))
    else:
        dense = bipolar
    return Hypervectors(model.from_dense(dense, storage_dtype), model, dim)


# ---------------------------------------------------------------------------------------------------------
# structures built from the algebra


def _check_sequence(x: Hypervectors, name: str) -> None:
    _check_hv(x, name)
    if x.data.dim() < 2 or x.data.shape[-2] == 0:
        raise ValueError(
            f"{name} must be a non-empty sequence of hypervectors (..., length), got batch shape {tuple(x.shape)}"
        )


def bind_sequence(x: Hypervectors) -> Hypervectors:
    """Binds a sequence (..., m) with position encoded by permutation: x_0 permuted m-1 times ... x_{m-1}."""
    _check_sequence(x, "x")
    length = x.data.shape[-2]
    result = x.vsa.permute(x.data[..., 0, :], length - 1, x.dim)
    for i in range(1, length):
        result = x.vsa.bind(result, x.vsa.permute(x.data[..., i, :], length - 1 - i, x.dim), x.dim)
    return Hypervectors(result, x.vsa, x.dim)


def sequence(x: Hypervectors) -> Hypervectors:
    """Bundles a sequence (..., m) with position encoded by permutation: multiset of permute(x_i, m-1-i)."""
    _check_sequence(x, "x")
    length = x.data.shape[-2]
    permuted = [x.vsa.permute(x.data[..., i, :], length - 1 - i, x.dim) for i in range(length)]
    return Hypervectors(x.vsa.multiset(torch.stack(permuted, dim=-2), x.dim), x.vsa, x.dim)


def ngrams(x: Hypervectors, n: int = 3) -> Hypervectors:
    """N-gram encoding of a sequence (..., m): the multiset of all bind_sequence(x[i:i+n]) (m >= n)."""
    _check_sequence(x, "x")
    check_positive_int(n, "n")
    length = x.data.shape[-2]
    if n > length:
        raise ValueError(f"n={n} is longer than the sequence (length {length})")
    windows = length - n + 1
    grams = x.vsa.permute(x.data[..., 0:windows, :], n - 1, x.dim)
    for j in range(1, n):
        shifted = x.vsa.permute(x.data[..., j : j + windows, :], n - 1 - j, x.dim)
        grams = x.vsa.bind(grams, shifted, x.dim)
    return Hypervectors(x.vsa.multiset(grams, x.dim), x.vsa, x.dim)


def hash_table(keys: Hypervectors, values: Hypervectors) -> Hypervectors:
    """A key-value record: multiset of bind(key_i, value_i) over the last batch axis; query with unbind(record, key)."""
    _check_compatible(keys, values, "keys", "values")
    _check_sequence(keys, "keys")
    _check_sequence(values, "values")
    if keys.shape[-1] != values.shape[-1]:
        raise ValueError(
            f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must have the same number of entries"
        )
    return multiset(bind(keys, values))
