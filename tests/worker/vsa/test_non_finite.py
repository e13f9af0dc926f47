"""Non-finite and overflowing values: the engine refuses them where hypervectors are validated, so that no
valid input makes a similarity NaN or ranks a broken item first (issue 18's HRR probes)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hd_compute as hc
from hd_compute.encoders import RandomProjectionEncoder
from hd_compute.models import Centroid
from hd_compute.structures import ItemMemory
from hd_compute.vsa.fhrr import UNIT_TOLERANCE
from hd_compute.vsa.hrr import max_squared_norm

FLOATS = [torch.float32, torch.float64]
NON_FINITE = [math.nan, math.inf, -math.inf]


def at_norm(direction: torch.Tensor, norm: float) -> torch.Tensor:
    """`direction` rescaled to the given norm (computed in float64 so the scaling itself cannot overflow)."""
    unit = direction.double() / torch.linalg.vector_norm(direction.double(), dim=-1, keepdim=True)
    return (unit * norm).to(direction.dtype)


@settings(max_examples=40, deadline=None)
@given(
    dim=st.integers(1, 300),
    dtype=st.sampled_from(FLOATS),
    bad=st.sampled_from(NON_FINITE),
    position=st.floats(0, 1, exclude_max=True),
)
def test_hrr_refuses_nan_and_infinity_anywhere(dim, dtype, bad, position):
    data = hc.random(3, dim, "HRR", dtype=dtype, seed=dim).data
    data[1, int(position * dim)] = bad
    with pytest.raises(ValueError, match="^data: HRR hypervectors must hold finite numbers, got NaN or infinity"):
        hc.Hypervectors(data, "HRR", dim, validate=True)
    with pytest.raises(ValueError, match="^dense: HRR hypervectors must hold finite numbers"):
        hc.Hypervectors.from_dense(data, "HRR", dtype=dtype)


def test_hrr_refuses_the_issue_probe_of_3e38():
    """Finite elements whose squared norm overflows float32: the probe that gave `null` similarities."""
    data = torch.full((2, 1024), 3e38)
    with pytest.raises(ValueError, match=r"^data: HRR hypervectors .* norm of at most .* in float32 at dimension 1024"):
        hc.Hypervectors(data, "HRR", 1024, validate=True)
    with pytest.raises(ValueError, match="HRR hypervectors"):
        ItemMemory.from_state_dict({"dim": 1024, "vsa": "HRR", "dtype": "float32", "vectors": data})


def test_float64_values_that_overflow_float32_storage_are_refused():
    with pytest.raises(ValueError, match="got NaN or infinity in float32"):
        hc.Hypervectors.from_dense(torch.tensor([1e39, 1.0], dtype=torch.float64), "HRR")


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 512), dtype=st.sampled_from(FLOATS), seed=st.integers(0, 2**16), constant=st.booleans())
def test_hrr_at_the_bound_is_accepted_and_every_operation_stays_finite(dim, dtype, seed, constant):
    """Just under the bound, bind/unbind (spectra up to D |a| |b|), dot and cosine are all finite. A constant
    vector puts its whole spectrum in one coefficient, the worst case for the transforms."""
    limit = math.sqrt(max_squared_norm(dtype, dim))
    direction = torch.ones((2, dim), dtype=dtype) if constant else hc.random(2, dim, "HRR", dtype=dtype, seed=seed).data
    x = hc.Hypervectors(at_norm(direction, 0.999 * limit), "HRR", dim, validate=True)
    a, b = x[0], x[1]
    for result in (hc.bind(a, b), hc.unbind(a, b), hc.bind(a, a)):
        assert bool(torch.isfinite(result.data).all())
    for similarity in (hc.cosine_similarity(x, x), hc.dot_similarity(x, x)):
        assert bool(torch.isfinite(similarity).all())
    torch.testing.assert_close(hc.cosine_similarity(a, a), torch.tensor(1.0), rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 512), dtype=st.sampled_from(FLOATS), seed=st.integers(0, 2**16))
def test_hrr_over_the_bound_is_refused(dim, dtype, seed):
    limit = math.sqrt(max_squared_norm(dtype, dim))
    data = at_norm(hc.random(2, dim, "HRR", dtype=dtype, seed=seed).data, 1.01 * limit)
    with pytest.raises(ValueError, match="norm of at most"):
        hc.Hypervectors(data, "HRR", dim, validate=True)


def test_random_hrr_vectors_are_far_inside_the_bound():
    x = hc.random(64, 10_000, "HRR", seed=0)
    hc.Hypervectors(x.data, "HRR", 10_000, validate=True)
    assert float(torch.linalg.vector_norm(x.data, dim=-1).max()) < 2.0


@pytest.mark.parametrize("bad", [complex(math.nan, 0), complex(math.inf, 0), complex(0, -math.inf)])
def test_fhrr_refuses_nan_and_infinity(bad):
    data = hc.random(2, 16, "FHRR", seed=0).data
    data[0, 5] = bad
    with pytest.raises(ValueError, match="^data: FHRR hypervectors must hold unit-magnitude .* got NaN or infinity"):
        hc.Hypervectors(data, "FHRR", 16, validate=True)


def test_fhrr_magnitudes_within_the_tolerance_pass_and_beyond_it_are_refused():
    data = hc.random(2, 16, "FHRR", dtype=torch.complex128, seed=0).data
    hc.Hypervectors(data * (1 + UNIT_TOLERANCE / 2), "FHRR", 16, validate=True)
    with pytest.raises(ValueError, match=r"^data: FHRR .*within 0.001 of 1\), got magnitudes from"):
        hc.Hypervectors(data * (1 + 2 * UNIT_TOLERANCE), "FHRR", 16, validate=True)


def test_hrr_memory_search_ranks_by_similarity_with_items_at_the_bound():
    """The issue's second probe: an item whose similarity was NaN ranked first. Items at the bound now give
    finite similarities, and the query's own item ranks first."""
    dim = 256
    limit = math.sqrt(max_squared_norm(torch.float32, dim))
    items = hc.random(8, dim, "HRR", seed=1)
    huge = hc.Hypervectors(at_norm(hc.random(4, dim, "HRR", seed=2).data, 0.999 * limit), "HRR", dim, validate=True)
    memory = ItemMemory(dim, "HRR")
    memory.add(items)
    memory.add(huge)
    result = memory.search(items[3], k=12)
    assert bool(torch.isfinite(result.similarities).all())
    assert int(result.indices[0]) == 3


def test_centroid_prototypes_summing_many_large_samples_give_finite_similarities():
    """Each sample is valid, but a class's sum of many has a squared norm past float32: cosine still works."""
    dim, per_class = 16, 50  # per_class**2 > 8 * dim**2: the prototypes' squared norms overflow float32
    limit = math.sqrt(max_squared_norm(torch.float32, dim))
    centers = hc.random(2, dim, "HRR", seed=3).data
    noise = 0.2 * hc.random(2 * per_class, dim, "HRR", seed=4).data
    samples = at_norm(centers.repeat_interleave(per_class, dim=0) + noise, 0.999 * limit)
    x = hc.Hypervectors(samples, "HRR", dim, validate=True)
    labels = torch.arange(2).repeat_interleave(per_class)
    model = Centroid(2, dim).fit(x, labels)
    assert not bool(torch.isfinite(model.weights.square().sum(1)).all())  # the overflow this test is about
    similarity = model.similarity(x)
    assert bool(torch.isfinite(similarity).all())
    assert model.score(x, labels) == 1.0


def test_random_projection_refuses_inputs_whose_projection_overflows():
    encoder = RandomProjectionEncoder(4, 128, "HRR", seed=0)
    x = torch.ones((3, 4))
    x[2] = 1e37
    with pytest.raises(ValueError, match="^x holds values too large to encode: the projection of row 2 overflows"):
        encoder.encode(x)
    assert bool(torch.isfinite(encoder.encode(x[:2]).data).all())
