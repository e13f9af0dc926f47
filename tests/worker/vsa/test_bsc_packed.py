"""Packed BSC (64 bits per int64 word) against a plain unpacked reference written here with numpy.

The reference keeps one bool per dimension and does the obvious thing; its own pack/unpack use the documented
layout (bit i -> word i // 64, bit i % 64, least significant first) with a Python loop, independent of the
library's packing code.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hd_compute as hc
from hd_compute.vsa.base import tiebreak_bipolar

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
dims = st.integers(1, 300)
batches = st.integers(1, 20)
seeds = st.integers(0, 2**31 - 1)


# --- the plain reference ------------------------------------------------------------------------------------


def ref_unpack(words: torch.Tensor, dim: int) -> np.ndarray:
    """int64 (..., W) -> bool (..., D), one dimension at a time."""
    u = words.cpu().numpy().view(np.uint64)
    bits = np.zeros((*u.shape[:-1], dim), dtype=bool)
    for i in range(dim):
        bits[..., i] = (u[..., i // 64] >> np.uint64(i % 64)) & np.uint64(1)
    return bits


def ref_pack(bits: np.ndarray) -> torch.Tensor:
    dim = bits.shape[-1]
    words = np.zeros((*bits.shape[:-1], (dim + 63) // 64), dtype=np.uint64)
    for i in range(dim):
        words[..., i // 64] |= bits[..., i].astype(np.uint64) << np.uint64(i % 64)
    return torch.from_numpy(words.view(np.int64).copy())


def ref_padding_clear(words: torch.Tensor, dim: int) -> bool:
    """All bits at positions >= dim of the last word are zero."""
    u = words.cpu().numpy().view(np.uint64)
    width = (dim + 63) // 64
    for pos in range(dim, width * 64):
        if ((u[..., pos // 64] >> np.uint64(pos % 64)) & np.uint64(1)).any():
            return False
    return True


def ref_tiebreak(dim: int) -> np.ndarray:
    return (tiebreak_bipolar(dim, torch.device("cpu")) == -1).numpy()


def ref_majority(bits: np.ndarray) -> np.ndarray:
    """Majority over axis -2; ties take the tie-break vector's bit (value -1 means bit 1)."""
    n = bits.shape[-2]
    ones = bits.sum(axis=-2)
    return np.where(2 * ones > n, True, np.where(2 * ones < n, False, ref_tiebreak(bits.shape[-1])))


def random_bits(rng: np.random.Generator, shape, p=0.5) -> np.ndarray:
    return rng.random(shape) < p


def bsc(bits: np.ndarray) -> hc.Hypervectors:
    return hc.Hypervectors(ref_pack(bits), "BSC", bits.shape[-1], validate=True)


# --- operations against the reference -------------------------------------------------------------------------


@SETTINGS
@given(batch=batches, dim=dims, seed=seeds)
def test_random_layout(batch, dim, seed):
    x = hc.random(batch, dim, "BSC", seed=seed)
    assert x.data.shape == (batch, (dim + 63) // 64) and x.data.dtype == torch.int64
    assert ref_padding_clear(x.data, dim)
    bits = ref_unpack(x.data, dim)
    assert torch.equal(x.data, ref_pack(bits))
    if batch * dim >= 2000:  # roughly half the bits set
        assert 0.4 < bits.mean() < 0.6


@SETTINGS
@given(batch=batches, dim=dims, seed=seeds)
def test_bind(batch, dim, seed):
    rng = np.random.default_rng(seed)
    a, b = random_bits(rng, (batch, dim)), random_bits(rng, (batch, dim))
    out = hc.bind(bsc(a), bsc(b))
    assert np.array_equal(ref_unpack(out.data, dim), a ^ b)
    assert np.array_equal(ref_unpack(hc.unbind(out, bsc(b)).data, dim), a)
    assert np.array_equal(ref_unpack(hc.inverse(bsc(a)).data, dim), a)


@SETTINGS
@given(batch=batches, n=st.integers(1, 12), dim=dims, seed=seeds, p=st.sampled_from([0.5, 0.1, 0.9]))
def test_multiset(batch, n, dim, seed, p):
    rng = np.random.default_rng(seed)
    bits = random_bits(rng, (batch, n, dim), p)
    if n % 2 == 0:  # force ties in the first dimensions: half the votes each way
        k = min(dim, 10)
        bits[:, : n // 2, :k] = True
        bits[:, n // 2 :, :k] = False
    out = hc.multiset(bsc(bits))
    assert out.shape == (batch,)
    assert np.array_equal(ref_unpack(out.data, dim), ref_majority(bits))
    # the 2-D path (a single bundle) agrees too
    single = hc.multiset(bsc(bits[0]))
    assert np.array_equal(ref_unpack(single.data, dim), ref_majority(bits[0]))


@SETTINGS
@given(dim=dims, seed=seeds)
def test_multiset_all_ties(dim, seed):
    rng = np.random.default_rng(seed)
    a = random_bits(rng, dim)
    pair = np.stack([a, ~a])
    out = hc.multiset(bsc(pair))
    assert np.array_equal(ref_unpack(out.data, dim), ref_tiebreak(dim))
    assert np.array_equal(ref_unpack(hc.bundle(bsc(a), bsc(~a)).data, dim), ref_tiebreak(dim))


@SETTINGS
@given(batch=batches, dim=dims, seed=seeds, shift=st.integers(-1000, 1000))
def test_permute(batch, dim, seed, shift):
    rng = np.random.default_rng(seed)
    bits = random_bits(rng, (batch, dim))
    out = hc.permute(bsc(bits), shift)
    assert np.array_equal(ref_unpack(out.data, dim), np.roll(bits, shift, axis=-1))
    assert ref_padding_clear(out.data, dim)


@SETTINGS
@given(q=batches, n=batches, dim=dims, seed=seeds)
def test_similarities(q, n, dim, seed):
    rng = np.random.default_rng(seed)
    a, b = random_bits(rng, (q, dim)), random_bits(rng, (n, dim))
    distance = (a[:, None, :] != b[None, :, :]).sum(-1)
    ha, hb = bsc(a), bsc(b)
    assert np.array_equal(hc.hamming_similarity(ha, hb).numpy(), dim - distance)
    assert np.array_equal(hc.dot_similarity(ha, hb).numpy(), dim - 2 * distance)
    np.testing.assert_allclose(hc.cosine_similarity(ha, hb).numpy(), (dim - 2 * distance) / dim, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(batch=batches, dim=dims, seed=seeds)
def test_dense_round_trip(batch, dim, seed):
    rng = np.random.default_rng(seed)
    bits = random_bits(rng, (batch, dim))
    x = bsc(bits)
    dense = x.dense()
    assert dense.dtype == torch.float32
    assert np.array_equal(dense.numpy(), np.where(bits, -1.0, 1.0))  # bit 1 <-> -1
    back = hc.Hypervectors.from_dense(dense, "BSC")
    assert back.dim == dim and torch.equal(back.data, x.data)
    assert torch.equal(hc.Hypervectors.from_dense(torch.from_numpy(np.where(bits, -1, 1)), "BSC").data, ref_pack(bits))


# --- the padding invariant -------------------------------------------------------------------------------------

PADDED_DIMS = [1, 7, 63, 65, 100, 127, 129, 300]


@pytest.mark.parametrize("dim", PADDED_DIMS)
def test_padding_always_zero(dim):
    x = hc.random(9, dim, "BSC", seed=dim)
    y = hc.random(9, dim, "BSC", seed=dim + 1)
    ones = hc.Hypervectors.from_dense(-torch.ones(4, dim), "BSC")  # every dimension bit 1
    results = {
        "random": x,
        "bind": hc.bind(x, y),
        "bind_ones": hc.bind(x, ones[0]),
        "multiset": hc.multiset(x),
        "multiset_even": hc.multiset(x[:4]),
        "multiset_ones": hc.multiset(ones),
        "bundle": hc.bundle(x, y),
        "permute": hc.permute(x, 5),
        "permute_neg": hc.permute(ones, -3),
        "from_dense": ones,
        "inverse": hc.inverse(x),
        "inverse_ones": hc.inverse(ones),
        "identity": hc.identity(3, dim, "BSC"),
        "level": hc.level(10, dim, "BSC", seed=1),
        "thermometer": hc.thermometer(10, dim, "BSC"),
        "circular": hc.circular(10, dim, "BSC", seed=1),
        "sequence": hc.sequence(x),
        "bind_sequence": hc.bind_sequence(x),
        "ngrams": hc.ngrams(x, 3),
        "hash_table": hc.hash_table(x, y),
    }
    for name, hv in results.items():
        assert ref_padding_clear(hv.data, dim), name
        hv.vsa.validate(hv.data, dim)
    # the all-ones thermometer level has every valid bit set but no padding bit
    assert ref_unpack(results["thermometer"].data[-1:], dim).all()


@pytest.mark.parametrize("dim", PADDED_DIMS)
def test_padding_bit_rejected(dim):
    x = hc.random(3, dim, "BSC", seed=3)
    bad = x.data.clone()
    first_padding_bit = 1 << (dim % 64)  # dim % 64 is in 1..63 here
    if first_padding_bit >= 1 << 63:
        first_padding_bit -= 1 << 64  # as a signed int64
    bad[1, -1] |= first_padding_bit
    with pytest.raises(ValueError, match="padding"):
        hc.Hypervectors(bad, "BSC", dim, validate=True)
    top = x.data.clone()
    top[0, -1] |= -(1 << 63)  # the highest bit of the last word
    with pytest.raises(ValueError, match="padding"):
        hc.Hypervectors(top, "BSC", dim, validate=True)
    hc.Hypervectors(x.data, "BSC", dim, validate=True)  # the untouched data is fine


@pytest.mark.parametrize("dim", [64, 128])
def test_no_padding_when_multiple_of_64(dim):
    all_ones = torch.full((2, dim // 64), -1, dtype=torch.int64)
    x = hc.Hypervectors(all_ones, "BSC", dim, validate=True)
    assert torch.equal(x.dense(), -torch.ones(2, dim))


# --- MAP similarity (sign-bit popcount path on CPU) against a float matmul ----------------------------------------


@SETTINGS
@given(q=batches, n=batches, dim=dims, seed=seeds)
def test_map_similarity_matches_float_matmul(q, n, dim, seed):
    a = hc.random(q, dim, "MAP", seed=seed)
    b = hc.random(n, dim, "MAP", seed=seed + 1)
    ref = a.data.float() @ b.data.float().T
    assert torch.equal(hc.dot_similarity(a, b).float(), ref)
    assert torch.equal(hc.cosine_similarity(a, b), ref / dim)
    assert torch.equal(hc.hamming_similarity(a, b).float(), (dim + ref) / 2)
