"""Algebraic laws of the four VSA models (MAP, BSC, HRR, FHRR), on CPU and (where present) CUDA.

One module, though long: each law is one test parametrised over every model and device, so a model that
breaks a law shows up next to the models that keep it.
"""

import itertools

import pytest
import torch

import hd_compute as hc
from hd_compute.vsa.base import tiebreak_bipolar

D = 2048  # moderate: noise ~ 1/sqrt(D) ~ 0.022
EXACT = ["MAP", "BSC", "FHRR"]


def cos(a, b):
    return hc.cosine_similarity(a, b)


def assert_same(x, y, vsa):
    """Exact equality for MAP/BSC, float closeness for HRR/FHRR."""
    assert x.vsa is y.vsa and x.dim == y.dim and x.shape == y.shape
    if vsa in ("MAP", "BSC"):
        assert torch.equal(x.data, y.data)
    else:
        torch.testing.assert_close(x.data, y.data, rtol=1e-4, atol=1e-5)


# --- binding ------------------------------------------------------------------------------------------


def test_unbind_recovers(vsa, device):
    a = hc.random(8, D, vsa, seed=1, device=device)
    b = hc.random(8, D, vsa, seed=2, device=device)
    bound = hc.bind(a, b)
    recovered = hc.unbind(bound, b)
    # binding makes something dissimilar to both inputs
    assert cos(bound, a).diagonal().abs().max() < 0.15
    assert cos(bound, b).diagonal().abs().max() < 0.15
    if vsa in ("MAP", "BSC"):
        assert torch.equal(recovered.data, a.data)
    elif vsa == "FHRR":
        torch.testing.assert_close(recovered.data, a.data, rtol=1e-4, atol=1e-5)
    else:  # HRR: approximate; a must stand out among random distractors and cleanup must find it
        distractors = hc.random(100, D, vsa, seed=3, device=device)
        memory = hc.cat([a, distractors])
        sims = cos(recovered, memory)  # (8, 108)
        own = sims[torch.arange(8), torch.arange(8)]
        assert own.min() > 0.4
        others = sims.clone()
        others[torch.arange(8), torch.arange(8)] = -2
        assert (own - others.max(dim=1).values).min() > 0.2
        result = hc.cleanup(recovered, memory)
        assert result.indices.cpu().tolist() == list(range(8))


def test_bind_commutes_and_inverse(vsa, device):
    a = hc.random(4, D, vsa, seed=5, device=device)
    b = hc.random(4, D, vsa, seed=6, device=device)
    assert_same(hc.bind(a, b), hc.bind(b, a), vsa)
    if vsa != "HRR":
        assert_same(hc.bind(a, hc.inverse(a)), hc.identity(4, D, vsa, device=device), vsa)


def test_identity_is_bind_identity(vsa, device):
    x = hc.random(5, D, vsa, seed=7, device=device)
    e = hc.identity(5, D, vsa, device=device)
    assert_same(hc.bind(x, e), x, vsa)
    assert_same(hc.bind(e, x), x, vsa)
    # a single identity broadcasts against a batch
    assert_same(hc.bind(x, hc.identity((), D, vsa, device=device)), x, vsa)


# --- bundling -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 8])
def test_multiset_similar_to_inputs(vsa, device, n):
    x = hc.random(n, D, vsa, seed=11, device=device)
    s = hc.multiset(x)
    assert s.shape == ()
    own = cos(s, x)
    noise = cos(s, hc.random(200, D, vsa, seed=12, device=device))
    assert own.min() > 0.2
    assert own.min() > noise.abs().max() + 0.1


def test_bundle_equals_multiset_of_pair(vsa, device):
    a = hc.random(3, D, vsa, seed=13, device=device)
    b = hc.random(3, D, vsa, seed=14, device=device)
    stacked = hc.Hypervectors(torch.stack([a.data, b.data], dim=-2), vsa, D)
    assert_same(hc.bundle(a, b), hc.multiset(stacked), vsa)
    own = torch.stack([cos(hc.bundle(a, b), a).diagonal(), cos(hc.bundle(a, b), b).diagonal()])
    assert own.min() > 0.3


@pytest.mark.parametrize("vsa", ["MAP", "BSC"])
def test_majority_tiebreak_deterministic(vsa, device):
    x = hc.random(6, D, vsa, seed=21, device=device)
    first, second = hc.multiset(x), hc.multiset(x.clone())
    assert torch.equal(first.data, second.data)
    # bundle of two: equal dimensions keep their value, the others take the tie-break vector -> cos ~ 0.5
    a, b = x[0], x[1]
    pair = hc.bundle(a, b)
    for v in (a, b):
        assert abs(float(cos(pair, v)) - 0.5) < 0.06
    # a vector and its negation tie everywhere: the result is exactly the tie-break vector
    neg = hc.Hypervectors.from_dense(-torch.ones(D), vsa).to(device)  # all -1 (all bits 1 for BSC)
    tied = hc.bundle(a, hc.bind(a, neg))
    expected = tiebreak_bipolar(D, torch.device(device)).float()
    assert torch.equal(tied.dense(), expected)


@pytest.mark.parametrize("vsa", ["MAP", "BSC"])
def test_bundle_two_independent_of_order(vsa, device):
    a = hc.random((), D, vsa, seed=22, device=device)
    b = hc.random((), D, vsa, seed=23, device=device)
    assert torch.equal(hc.bundle(a, b).data, hc.bundle(b, a).data)


# --- permutation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1, 5, -3, D - 1, D + 7, -3 * D - 2])
def test_permute_invertible_and_dissimilar(vsa, device, shift):
    x = hc.random(4, D, vsa, seed=31, device=device)
    p = hc.permute(x, shift)
    assert_same(hc.permute(p, -shift), x, vsa)
    assert cos(p, x).diagonal().abs().max() < 0.1
    if vsa != "HRR":  # cyclic shift: permute(x, D) is x itself (HRR uses a random permutation instead)
        assert_same(hc.permute(x, D), x, vsa)
    # composition adds shifts
    assert_same(hc.permute(hc.permute(x, shift), 3), hc.permute(x, shift + 3), vsa)


@pytest.mark.parametrize("shift", [-(2**63), 2**63 - 1])
def test_permute_takes_every_int64_shift(vsa, device, shift):
    """The issue's probe (shifts = -2^63 gave a 500): any int64 works; a cyclic shift equals the one modulo D."""
    x = hc.random(2, 100, vsa, seed=33, device=device)
    p = hc.permute(x, shift)
    if vsa == "HRR":
        assert_same(hc.permute(p, -(shift + 1)), hc.permute(x, -1), vsa)
    else:
        assert_same(p, hc.permute(x, shift % 100), vsa)


@pytest.mark.parametrize("shift", [2**63, -(2**63) - 1, 10**30])
def test_permute_refuses_shifts_beyond_int64(shift):
    with pytest.raises(ValueError, match=r"shifts must be in \[-9223372036854775808, 9223372036854775807\]"):
        hc.permute(hc.random(1, 16, "MAP", seed=0), shift)


def test_permute_matches_roll_of_dense(vsa, device):
    """A cyclic shift of the dense view; HRR instead applies its fixed random permutation `shift` times."""
    from hd_compute.vsa.hrr import permutation_power

    x = hc.random(3, 200, vsa, seed=32, device=device)
    for shift in (1, 37, -5, 401):
        if vsa == "HRR":
            step = permutation_power(200, 1, x.device)
            expected = x.dense()
            for _ in range(abs(shift)):
                if shift > 0:
                    expected = expected[..., step]
                else:
                    expected = expected.scatter(-1, step.expand_as(expected), expected)
        else:
            expected = torch.roll(x.dense(), shift, dims=-1)
        torch.testing.assert_close(hc.permute(x, shift).dense(), expected)


# --- random vectors ---------------------------------------------------------------------------------------


def test_random_quasi_orthogonal(vsa, device):
    x = hc.random(50, 10_000, vsa, seed=41, device=device)
    sims = cos(x, x)
    off = sims[~torch.eye(50, dtype=torch.bool, device=sims.device)]
    assert off.abs().max() < 0.05
    torch.testing.assert_close(sims.diagonal(), torch.ones(50, device=sims.device), rtol=0, atol=1e-5)


def test_random_valid_values(vsa, device):
    x = hc.random((2, 3), 300, vsa, seed=42, device=device)
    assert x.shape == (2, 3)
    x.vsa.validate(x.data, x.dim)
    if vsa == "HRR":  # N(0, 1/D): norm ~ 1
        norms = x.data.norm(dim=-1)
        assert ((norms - 1).abs() < 0.25).all()


def test_determinism(vsa, device):
    a = hc.random(5, 500, vsa, seed=123, device=device)
    b = hc.random(5, 500, vsa, seed=123, device=device)
    c = hc.random(5, 500, vsa, seed=124, device=device)
    assert torch.equal(a.data, b.data)
    assert not torch.equal(a.data, c.data)
    # a seed gives the same vectors on every device
    assert torch.equal(a.data.cpu(), hc.random(5, 500, vsa, seed=123).data)
    g1 = torch.Generator(device=device).manual_seed(9)
    g2 = torch.Generator(device=device).manual_seed(9)
    x = hc.random(5, 500, vsa, generator=g1, device=device)
    y = hc.random(5, 500, vsa, generator=g2, device=device)
    assert torch.equal(x.data, y.data)
    # the generator advances: a second draw differs
    assert not torch.equal(hc.random(5, 500, vsa, generator=g1, device=device).data, x.data)
    for make in (hc.level, hc.circular):
        assert torch.equal(make(7, 300, vsa, seed=4, device=device).data, make(7, 300, vsa, seed=4, device=device).data)


def test_map_int8_and_float32_agree(device):
    a8 = hc.random(20, 1000, "MAP", seed=51, device=device)
    b8 = hc.random(30, 1000, "MAP", seed=52, device=device)
    assert a8.dtype == torch.int8  # default storage
    a32 = hc.random(20, 1000, "MAP", seed=51, device=device, dtype=torch.float32)
    b32 = hc.random(30, 1000, "MAP", seed=52, device=device, dtype=torch.float32)
    assert a32.dtype == torch.float32
    assert torch.equal(a8.data.float(), a32.data)
    assert torch.equal(cos(a8, b8), cos(a32, b32))
    assert torch.equal(hc.dot_similarity(a8, b8).float(), hc.dot_similarity(a32, b32).float())
    assert torch.equal(hc.hamming_similarity(a8, b8), hc.hamming_similarity(a32, b32))
    assert torch.equal(hc.multiset(a8).data.float(), hc.multiset(a32).data)
    assert torch.equal(hc.bind(a8[:5], b8[:5]).data.float(), hc.bind(a32[:5], b32[:5]).data)


# --- broadcasting ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["bind", "unbind", "bundle"])
def test_broadcasting(vsa, device, op):
    fn = getattr(hc, op)
    a = hc.random((3, 1), 256, vsa, seed=61, device=device)
    b = hc.random((1, 4), 256, vsa, seed=62, device=device)
    out = fn(a, b)
    assert out.shape == (3, 4)
    for i, j in itertools.product(range(3), range(4)):
        assert_same(out[i, j], fn(a[i, 0], b[0, j]), vsa)
    # a single vector broadcasts against a batch
    single = hc.random((), 256, vsa, seed=63, device=device)
    out2 = fn(a, single)
    assert out2.shape == (3, 1)
    assert_same(out2[1, 0], fn(a[1, 0], single), vsa)


def test_similarity_shapes(vsa, device):
    q = hc.random((2, 3), 128, vsa, seed=64, device=device)
    m = hc.random(5, 128, vsa, seed=65, device=device)
    assert cos(q, m).shape == (2, 3, 5)
    assert cos(q[0, 0], m).shape == (5,)
    assert hc.dot_similarity(q, m[0]).shape == (2, 3)
    torch.testing.assert_close(cos(q, m)[1, 2], cos(q[1, 2], m))


# --- embeddings -----------------------------------------------------------------------------------------------


def test_level(vsa, device):
    lv = hc.level(11, 4096, vsa, seed=71, device=device)
    assert lv.shape == (11,)
    s = cos(lv, lv).cpu()
    for i in range(10):
        assert s[i, i + 1] > 0.8  # neighbours ~0.9
    for i in range(11):
        row = s[i]
        # similarity falls with distance
        for j in range(11):
            for k in range(11):
                if abs(i - j) + 2 < abs(i - k):
                    assert row[j] > row[k]
    assert abs(float(s[0, 10])) < 0.08  # the ends are quasi-orthogonal
    assert abs(float(s[0, 5]) - 0.5) < 0.1


def test_thermometer(vsa, device):
    t = hc.thermometer(5, 1000, vsa, device=device)
    s = cos(t, t).cpu()
    torch.testing.assert_close(s[0], torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0]), atol=1e-5, rtol=0)
    assert s[1, 2] > s[1, 3] > s[1, 4]
    # level i has its first round(i * D / 4) dimensions at -1
    dense = t.dense().real.sign() if vsa == "FHRR" else t.dense().sign()
    assert int((dense[2] < 0).sum()) == 500 and bool((dense[2, :500] < 0).all())


def test_circular(vsa, device):
    n = 12
    c = hc.circular(n, 4096, vsa, seed=81, device=device)
    s = cos(c, c).cpu()
    # first and last are neighbours, as similar as first and second
    assert s[0, n - 1] > 0.7 and s[0, 1] > 0.7
    assert abs(float(s[0, n - 1] - s[0, 1])) < 0.08
    # opposite points are quasi-orthogonal
    for i in range(n):
        assert abs(float(s[i, (i + n // 2) % n])) < 0.1
    # similarity falls with circular distance
    for dist in range(1, n // 2):
        assert s[0, dist] > s[0, dist + 1] - 0.02
        assert s[0, n - dist] > s[0, (n - dist - 1) % n] - 0.02
    assert s[0, 1] > s[0, 3] > s[0, 5]


# --- structures built from the algebra -------------------------------------------------------------------------


def test_bind_sequence(vsa, device):
    x = hc.random(4, 512, vsa, seed=91, device=device)
    expected = hc.permute(x[0], 3)
    for i in range(1, 4):
        expected = hc.bind(expected, hc.permute(x[i], 3 - i))
    assert_same(hc.bind_sequence(x), expected, vsa)
    reversed_x = hc.Hypervectors(x.data.flip(0), vsa, 512)
    similarity = abs(float(cos(hc.bind_sequence(x), hc.bind_sequence(reversed_x))))
    assert similarity < 0.2  # order matters, for HRR too


def test_hrr_permutation_is_not_a_shift(device):
    """A cyclic shift commutes with circular convolution, which would erase order in HRR sequences."""
    a, b = hc.random(2, 512, "HRR", seed=94, device=device)
    shifted_first = hc.bind(hc.permute(a, 1), b)
    shifted_second = hc.bind(a, hc.permute(b, 1))
    assert abs(float(cos(shifted_first, shifted_second))) < 0.2
    # a permutation: the same multiset of values, moved
    torch.testing.assert_close(hc.permute(a, 5).data.sort().values, a.data.sort().values)


def test_sequence(vsa, device):
    x = hc.random(3, D, vsa, seed=92, device=device)
    s = hc.sequence(x)
    parts = hc.Hypervectors(torch.stack([hc.permute(x[i], 2 - i).data for i in range(3)]), vsa, D)
    assert_same(s, hc.multiset(parts), vsa)
    assert cos(s, parts).min() > 0.3
    assert cos(s, x)[:2].abs().max() < 0.1  # unpermuted elements (but the last) are not in it


def test_ngrams(vsa, device):
    x = hc.random((2, 6), 512, vsa, seed=93, device=device)
    n = 3
    out = hc.ngrams(x, n)
    assert out.shape == (2,)
    for b in range(2):
        grams = [hc.bind_sequence(hc.Hypervectors(x.data[b, i : i + n], vsa, 512)).data for i in range(6 - n + 1)]
        assert_same(out[b], hc.multiset(hc.Hypervectors(torch.stack(grams), vsa, 512)), vsa)
    # n equal to the length: a single gram
    assert_same(hc.ngrams(x[0], 6), hc.bind_sequence(x[0]), vsa)
    with pytest.raises(ValueError, match="n=7"):
        hc.ngrams(x[0], 7)


def test_hash_table(vsa, device):
    keys = hc.random(5, D, vsa, seed=94, device=device)
    values = hc.random(5, D, vsa, seed=95, device=device)
    record = hc.hash_table(keys, values)
    assert record.shape == ()
    queried = hc.unbind(record, keys)  # broadcasts: (5,)
    result = hc.cleanup(queried, values)
    assert result.indices.cpu().tolist() == list(range(5))
    assert result.similarities.min() > 0.2


# --- cleanup and similarities ----------------------------------------------------------------------------------


def test_cleanup_threshold(vsa, device):
    memory = hc.random(20, D, vsa, seed=101, device=device)
    stored = memory[7]
    assert int(hc.cleanup(stored, memory, threshold=0.5).indices) == 7
    torch.testing.assert_close(float(hc.cleanup(stored, memory).similarities), 1.0, atol=1e-5, rtol=0)
    stranger = hc.random(3, D, vsa, seed=102, device=device)
    result = hc.cleanup(stranger, memory, threshold=0.5)
    assert result.indices.cpu().tolist() == [-1, -1, -1]
    assert (result.similarities < 0.5).all()
    # without a threshold, the best index is still reported
    assert (hc.cleanup(stranger, memory, threshold=-1.0).indices >= 0).all()


@pytest.mark.parametrize("vsa", ["MAP", "BSC"])
@pytest.mark.parametrize("dim", [1, 63, 64, 1000, 1001])
def test_dot_cosine_hamming_relations(vsa, device, dim):
    a = hc.random(7, dim, vsa, seed=111, device=device)
    b = hc.random(9, dim, vsa, seed=112, device=device)
    dense_a, dense_b = a.dense().cpu(), b.dense().cpu()
    distance = (dense_a[:, None, :] != dense_b[None, :, :]).sum(-1)
    dot = hc.dot_similarity(a, b).cpu()
    ham = hc.hamming_similarity(a, b).cpu()
    assert torch.equal(dot.long(), dim - 2 * distance)
    assert torch.equal(ham.long(), dim - distance)
    assert ham.dtype == torch.int32
    torch.testing.assert_close(cos(a, b).cpu(), dot.float() / dim)
    # self similarities
    assert bool((hc.hamming_similarity(a, a).diagonal() == dim).all())


@pytest.mark.parametrize("vsa", ["HRR", "FHRR"])
def test_hamming_rejects_real_models(vsa, device):
    x = hc.random(2, 64, vsa, seed=1, device=device)
    with pytest.raises(TypeError, match="hamming_similarity"):
        hc.hamming_similarity(x, x)


@pytest.mark.parametrize("vsa", ["HRR", "FHRR"])
def test_real_model_dot_and_cosine(vsa, device):
    a = hc.random(4, 300, vsa, seed=121, device=device)
    b = hc.random(6, 300, vsa, seed=122, device=device)
    da, db = a.dense().cpu().to(torch.complex128), b.dense().cpu().to(torch.complex128)
    dot = (da @ db.conj().T).real
    torch.testing.assert_close(hc.dot_similarity(a, b).cpu().double(), dot, rtol=1e-4, atol=1e-4)
    norms = da.abs().square().sum(-1).sqrt()[:, None] * db.abs().square().sum(-1).sqrt()[None, :]
    torch.testing.assert_close(cos(a, b).cpu().double(), dot / norms, rtol=1e-4, atol=1e-4)
