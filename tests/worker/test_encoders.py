"""IDLevelEncoder and RandomProjectionEncoder: shapes, locality, chunking, bounded memory."""

import os

import pytest
import torch

import hd_compute as hc
from hd_compute.encoders import IDLevelEncoder, RandomProjectionEncoder

MODELS = ["MAP", "BSC", "HRR", "FHRR"]
ENCODERS = [IDLevelEncoder, RandomProjectionEncoder]


def sample_batch(batch, features, seed):
    return torch.rand(batch, features, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("encoder_cls", ENCODERS)
@pytest.mark.parametrize("vsa", MODELS)
def test_output_shapes(encoder_cls, vsa):
    encoder = encoder_cls(13, 500, vsa)
    x = sample_batch(7, 13, 1)
    out = encoder(x)
    assert isinstance(out, hc.Hypervectors)
    assert out.vsa.name == vsa and out.dim == 500 and out.shape == (7,)
    assert out.dtype == out.vsa.default_dtype
    out.vsa.validate(out.data, 500)
    dense = encoder.encode(x, quantize=False)
    assert isinstance(dense, torch.Tensor) and dense.shape == (7, 500)
    # a single sample, as a (1, features) batch; lists and integer arrays are accepted too
    assert encoder(x[:1]).shape == (1,)
    assert encoder(x[:2].tolist()).equal(encoder(x[:2]))
    assert encoder(torch.ones(2, 13, dtype=torch.int64)).shape == (2,)


@pytest.mark.parametrize("encoder_cls", ENCODERS)
@pytest.mark.parametrize("vsa", MODELS)
def test_locality(encoder_cls, vsa):
    features, dim = 20, 4096
    encoder = encoder_cls(features, dim, vsa)
    noise = 0.02 * (sample_batch(10, features, 3) - 0.5)
    if encoder_cls is IDLevelEncoder:
        # values in [0, 0.2] against values 0.8 higher: every feature falls on a distant level
        x = 0.2 * sample_batch(10, features, 2)
        close, far = x + noise, x + 0.8
    else:
        # a random projection preserves angles: centred inputs, far = the opposite direction
        x = sample_batch(10, features, 2) - 0.5
        close, far = x + noise, -x
    hx, hclose, hfar = encoder(x), encoder(close), encoder(far)
    sim_close = hc.cosine_similarity(hx, hclose).diagonal()
    sim_far = hc.cosine_similarity(hx, hfar).diagonal()
    assert sim_close.min() > 0.6
    assert sim_far.max() < 0.4
    assert (sim_close - sim_far).min() > 0.3
    # identical inputs give identical hypervectors (the encoder is deterministic)
    assert encoder(x).equal(hx)
    # two encoders with the same seed agree; a different seed gives other codes
    assert encoder_cls(features, dim, vsa, seed=0)(x).equal(hx)
    other = encoder_cls(features, dim, vsa, seed=1)(x)
    assert not other.equal(hx)
    assert hc.cosine_similarity(hx, other).diagonal().abs().max() < 0.5


@pytest.mark.parametrize("vsa", MODELS)
def test_id_level_chunking_is_exact(vsa):
    features, dim, batch = 37, 300, 11
    x = sample_batch(batch, features, 4)
    big = IDLevelEncoder(features, dim, vsa, max_chunk_bytes=1 << 30)
    # a few features (or samples) per chunk
    small = IDLevelEncoder(features, dim, vsa, max_chunk_bytes=batch * dim * 8 * 3)
    tiny = IDLevelEncoder(features, dim, vsa, max_chunk_bytes=1)  # the smallest possible chunks
    reference = big.encode(x, quantize=False)
    for enc in (small, tiny):
        dense = enc.encode(x, quantize=False)
        if vsa in ("MAP", "BSC"):  # sums of ±1 are exact in float32 in any order
            assert torch.equal(dense, reference)
            assert enc(x).equal(big(x))
        else:  # float sums in a different order: equal up to rounding
            torch.testing.assert_close(dense, reference, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(enc(x).data, big(x).data, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("vsa", ["MAP", "BSC"])
def test_id_level_matches_definition(vsa):
    """A sample is the majority of bind(ID_f, level(x_f)) over its features."""
    features, dim = 9, 257
    encoder = IDLevelEncoder(features, dim, vsa, levels=10)
    x = sample_batch(4, features, 5)
    out = encoder(x)
    idx = (x * 9).round().long()
    for b in range(4):
        bound = hc.bind(encoder.ids, encoder.level_vectors[idx[b]])
        assert hc.multiset(bound).equal(out[b])
    # values outside [low, high] take the end levels
    assert encoder(x * 0 - 5).equal(encoder(x * 0))
    assert encoder(x * 0 + 7).equal(encoder(x * 0 + 1))


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


@pytest.mark.slow
def test_id_level_memory_bounded():
    """256 x 2,000 features at D=10,000: a materialized (batch, features, D) float32 tensor would be 20 GB."""
    if not os.access("/proc/self/clear_refs", os.W_OK) or not os.path.exists("/proc/self/status"):
        pytest.skip("/proc/self/clear_refs is not writable; cannot reset the peak RSS")
    batch, features, dim = 256, 2_000, 10_000
    encoder = IDLevelEncoder(features, dim, "MAP")
    x = sample_batch(batch, features, 6)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak RSS) to the current RSS
    before = _vm_kib("VmRSS")
    assert _vm_kib("VmHWM") <= before + 1024
    out = encoder(x)
    growth_mib = (_vm_kib("VmHWM") - before) / 1024
    print(f"IDLevelEncoder 256x2000 at D=10000: peak RSS growth {growth_mib:.0f} MiB")
    assert out.shape == (batch,)
    assert growth_mib < 1024
