"""native kernels == numpy fallback == plain reference, for every code path the CPU supports."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hd_compute.kernels import cpu

native = pytest.importorskip("hd_compute.kernels._cpu") if cpu.NATIVE_AVAILABLE else None
needs_native = pytest.mark.skipif(not cpu.NATIVE_AVAILABLE, reason="compiled extension not available")

LEVELS = list(range(native._max_level() + 1)) if native is not None else []
HYP = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


@pytest.fixture(params=LEVELS or [None], ids=lambda lvl: f"level{lvl}")
def level(request):
    """Run a test on each code path (generic, popcnt, avx2, avx512...) this CPU can execute."""
    if request.param is None:
        pytest.skip("compiled extension not available")
    prev = native._set_level(request.param)
    try:
        yield request.param
    finally:
        native._set_level(prev)


@pytest.fixture(params=[1, 2], ids=lambda t: f"threads{t}")
def threads(request):
    prev = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(prev)


def rand_packed(rng: np.random.Generator, n: int, d: int) -> torch.Tensor:
    """Random packed hypervectors of d bits with zero padding."""
    w = (d + 63) // 64
    x = rng.integers(0, 2**64, size=(n, w), dtype=np.uint64, endpoint=False)
    if d % 64:
        x[:, -1] &= np.uint64((1 << (d % 64)) - 1)
    return torch.from_numpy(x.view(np.int64).copy())


def rand_int8(rng: np.random.Generator, n: int, d: int, extremes: bool = False) -> torch.Tensor:
    if extremes:
        x = rng.choice(np.array([-128, 127, -1, 0], dtype=np.int8), size=(n, d), p=[0.45, 0.45, 0.05, 0.05])
    else:
        x = rng.integers(-128, 128, size=(n, d), dtype=np.int8)
    return torch.from_numpy(np.ascontiguousarray(x))


shape_n = st.integers(0, 13)
shape_d = st.sampled_from([1, 7, 63, 64, 65, 127, 128, 129, 500, 511, 512, 513, 1000, 1027])


# ------------------------------------------------------------------------------------------
# hamming_matrix
# ------------------------------------------------------------------------------------------
@given(n_a=shape_n, n_b=shape_n, d=shape_d, seed=st.integers(0, 2**32 - 1))
@HYP
def test_hamming_matrix_random(level, threads, n_a, n_b, d, seed):
    rng = np.random.default_rng(seed)
    a, b = rand_packed(rng, n_a, d), rand_packed(rng, n_b, d)
    ref = cpu.reference_hamming_matrix(a, b)
    got = cpu.hamming_matrix(a, b)
    assert got.dtype == torch.int32 and got.shape == (n_a, n_b)
    np.testing.assert_array_equal(got.numpy(), ref)
    np.testing.assert_array_equal(cpu.numpy_hamming_matrix(a.numpy(), b.numpy()), ref)


@pytest.mark.parametrize("n_a,n_b,d", [(37, 45, 10000), (1, 300, 4097), (300, 1, 640), (9, 9, 64), (5, 1030, 129)])
def test_hamming_matrix_blocking_edges(level, threads, n_a, n_b, d):
    rng = np.random.default_rng(n_a * 1000 + n_b)
    a, b = rand_packed(rng, n_a, d), rand_packed(rng, n_b, d)
    ref = cpu.numpy_hamming_matrix(a.numpy(), b.numpy())
    np.testing.assert_array_equal(cpu.hamming_matrix(a, b).numpy(), ref)
    if n_a * n_b <= 2000:
        np.testing.assert_array_equal(cpu.reference_hamming_matrix(a, b), ref)


def test_hamming_extremes_and_self():
    d = 200
    w = 4
    ones = torch.full((3, w), -1, dtype=torch.int64)
    ones[:, -1] = (1 << (d % 64)) - 1
    zeros = torch.zeros((2, w), dtype=torch.int64)
    got = cpu.hamming_matrix(ones, zeros)
    assert (got == d).all()
    rng = np.random.default_rng(1)
    x = rand_packed(rng, 17, 999)
    assert (torch.diagonal(cpu.hamming_matrix(x, x)) == 0).all()
    h = cpu.hamming_matrix(x, x)
    assert torch.equal(h, h.T)


@needs_native
@pytest.mark.parametrize("nthreads", [0, 1, 2, 3, 8])
def test_hamming_extension_direct(level, nthreads):
    rng = np.random.default_rng(nthreads)
    a, b = rand_packed(rng, 23, 777), rand_packed(rng, 31, 777)
    out = torch.full((23, 31), -7, dtype=torch.int32)
    native.hamming_matrix(a.data_ptr(), 23, b.data_ptr(), 31, a.shape[1], out.data_ptr(), nthreads)
    np.testing.assert_array_equal(out.numpy(), cpu.reference_hamming_matrix(a, b))
    # large enough that the work is really split over threads
    a, b = rand_packed(rng, 130, 4000), rand_packed(rng, 70, 4000)
    out = torch.empty((130, 70), dtype=torch.int32)
    native.hamming_matrix(a.data_ptr(), 130, b.data_ptr(), 70, a.shape[1], out.data_ptr(), nthreads)
    np.testing.assert_array_equal(out.numpy(), cpu.numpy_hamming_matrix(a.numpy(), b.numpy()))
    # few queries, many items: the split goes over the items
    out = torch.empty((3, 130), dtype=torch.int32)
    native.hamming_matrix(b.data_ptr(), 3, a.data_ptr(), 130, a.shape[1], out.data_ptr(), nthreads)
    np.testing.assert_array_equal(out.numpy(), cpu.numpy_hamming_matrix(b[:3].numpy(), a.numpy()))


# ------------------------------------------------------------------------------------------
# bit_counts
# ------------------------------------------------------------------------------------------
@given(n=st.sampled_from([0, 1, 2, 3, 254, 255, 256, 257, 600]), d=shape_d, seed=st.integers(0, 2**32 - 1))
@HYP
def test_bit_counts_random(level, threads, n, d, seed):
    rng = np.random.default_rng(seed)
    x = rand_packed(rng, n, d)
    ref = cpu.reference_bit_counts(x)
    got = cpu.bit_counts(x)
    assert got.dtype == torch.int32 and got.shape == (x.shape[1] * 64,)
    np.testing.assert_array_equal(got.numpy(), ref)
    np.testing.assert_array_equal(cpu.numpy_bit_counts(x.numpy()), ref)
    if d % 64:
        assert (got[d:] == 0).all()  # padding bits are zero


def test_bit_counts_all_ones_many_rows(level, threads):
    n, w = 1000, 203  # > 255 rows: exercises the byte-accumulator flush with every lane at its max
    x = torch.full((n, w), -1, dtype=torch.int64)
    got = cpu.bit_counts(x)
    assert (got == n).all()
    y = rand_packed(np.random.default_rng(8), n, w * 64 - 3)
    np.testing.assert_array_equal(cpu.bit_counts(y).numpy(), cpu.numpy_bit_counts(y.numpy()))


# ------------------------------------------------------------------------------------------
# int8_column_sum
# ------------------------------------------------------------------------------------------
@given(
    n=st.sampled_from([0, 1, 2, 3, 4, 5, 255, 256, 257, 513, 1030]),
    d=st.sampled_from([1, 3, 63, 64, 65, 100, 128, 129, 1000]),
    extremes=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
@HYP
def test_int8_column_sum_random(level, threads, n, d, extremes, seed):
    rng = np.random.default_rng(seed)
    x = rand_int8(rng, n, d, extremes)
    ref = cpu.reference_int8_column_sum(x)
    got = cpu.int8_column_sum(x)
    assert got.dtype == torch.int32 and got.shape == (d,)
    np.testing.assert_array_equal(got.numpy(), ref)
    np.testing.assert_array_equal(cpu.numpy_int8_column_sum(x.numpy()), ref)


@pytest.mark.parametrize("value", [-128, 127])
def test_int8_column_sum_constant_extremes(level, threads, value):
    n, d = 2000, 300  # n > 256: the int16 accumulators must be flushed
    x = torch.full((n, d), value, dtype=torch.int8)
    assert (cpu.int8_column_sum(x) == n * value).all()


def test_int8_column_sum_matches_torch():
    x = rand_int8(np.random.default_rng(5), 700, 2050)
    assert torch.equal(cpu.int8_column_sum(x), torch.sum(x, dim=0, dtype=torch.int32))


# ------------------------------------------------------------------------------------------
# pack_sign_bits_int8
# ------------------------------------------------------------------------------------------
@given(n=st.integers(0, 9), d=shape_d, extremes=st.booleans(), seed=st.integers(0, 2**32 - 1))
@HYP
def test_pack_sign_bits_random(level, threads, n, d, extremes, seed):
    rng = np.random.default_rng(seed)
    x = rand_int8(rng, n, d, extremes)
    ref = cpu.reference_pack_sign_bits_int8(x)
    got = cpu.pack_sign_bits_int8(x)
    assert got.dtype == torch.int64 and got.shape == (n, (d + 63) // 64)
    np.testing.assert_array_equal(got.numpy(), ref)
    np.testing.assert_array_equal(cpu.numpy_pack_sign_bits_int8(x.numpy()), ref)
    # round trip: the packed vectors' bit counts are the number of negatives per column
    counts = cpu.bit_counts(got)
    np.testing.assert_array_equal(counts.numpy()[:d], (x.numpy() < 0).sum(axis=0))
    assert (counts[d:] == 0).all()


def test_pack_sign_bits_big_threads(level, threads):
    x = rand_int8(np.random.default_rng(3), 3001, 1111)
    np.testing.assert_array_equal(cpu.pack_sign_bits_int8(x).numpy(), cpu.numpy_pack_sign_bits_int8(x.numpy()))


@needs_native
def test_pack_sign_bits_extra_words_zeroed():
    x = rand_int8(np.random.default_rng(4), 5, 70)
    out = torch.full((5, 4), -1, dtype=torch.int64)
    native.pack_sign_bits_int8(x.data_ptr(), 5, 70, 4, out.data_ptr(), 1)
    np.testing.assert_array_equal(out[:, :2].numpy(), cpu.reference_pack_sign_bits_int8(x))
    assert (out[:, 2:] == 0).all()


# ------------------------------------------------------------------------------------------
# numpy fallback through the public wrapper
# ------------------------------------------------------------------------------------------
def test_wrapper_numpy_fallback(monkeypatch):
    rng = np.random.default_rng(9)
    a, b = rand_packed(rng, 7, 300), rand_packed(rng, 5, 300)
    x8 = rand_int8(rng, 300, 130, extremes=True)
    native_results = [cpu.hamming_matrix(a, b), cpu.bit_counts(a), cpu.int8_column_sum(x8), cpu.pack_sign_bits_int8(x8)]
    monkeypatch.setattr(cpu, "_native", None)
    assert cpu.features() == "numpy"
    fallback = [cpu.hamming_matrix(a, b), cpu.bit_counts(a), cpu.int8_column_sum(x8), cpu.pack_sign_bits_int8(x8)]
    for n, f in zip(native_results, fallback, strict=True):
        assert n.dtype == f.dtype and n.shape == f.shape
        assert torch.equal(n, f)
    # empty shapes
    assert cpu.hamming_matrix(a[:0], b).shape == (0, 5)
    assert (cpu.bit_counts(a[:0]) == 0).all()
    assert (cpu.int8_column_sum(x8[:0]) == 0).all()
    assert cpu.pack_sign_bits_int8(x8[:0]).shape == (0, 3)


def test_numpy_hamming_chunking(monkeypatch):
    monkeypatch.setattr(cpu, "_NUMPY_CHUNK_BYTES", 4096)  # force many small chunks
    rng = np.random.default_rng(11)
    a, b = rand_packed(rng, 21, 9000), rand_packed(rng, 13, 9000)
    np.testing.assert_array_equal(cpu.numpy_hamming_matrix(a.numpy(), b.numpy()), cpu.reference_hamming_matrix(a, b))
    np.testing.assert_array_equal(cpu.numpy_bit_counts(a.numpy()), cpu.reference_bit_counts(a))


def test_env_disables_native():
    code = (
        "from hd_compute.kernels import cpu; import torch;"
        "assert not cpu.NATIVE_AVAILABLE; assert cpu.features() == 'numpy';"
        "x = torch.tensor([[5, -1]], dtype=torch.int64); assert cpu.hamming_matrix(x, x).item() == 0"
    )
    env = dict(os.environ, HDC_DISABLE_NATIVE_KERNELS="1")
    package_root = os.path.dirname(os.path.dirname(cpu.__file__.rsplit(os.sep, 1)[0]))
    env["PYTHONPATH"] = os.pathsep.join([package_root, *sys.path])
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def test_features():
    f = cpu.features()
    assert isinstance(f, str) and f
    if cpu.NATIVE_AVAILABLE:
        assert f in ("avx512-vpopcntdq", "avx512bw+popcnt", "avx2+popcnt", "popcnt", "generic")


# ------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------
def test_wrapper_rejects_bad_inputs():
    a = torch.zeros((3, 4), dtype=torch.int64)
    with pytest.raises(TypeError, match="a"):
        cpu.hamming_matrix(a.to(torch.int32), a)
    with pytest.raises(TypeError, match="b"):
        cpu.hamming_matrix(a, np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="2-D"):
        cpu.hamming_matrix(a[0], a)
    with pytest.raises(ValueError, match="same number of words"):
        cpu.hamming_matrix(a, torch.zeros((3, 5), dtype=torch.int64))
    with pytest.raises(TypeError, match="int64"):
        cpu.bit_counts(a.to(torch.uint8))
    with pytest.raises(ValueError, match="2-D"):
        cpu.bit_counts(torch.zeros((2, 3, 4), dtype=torch.int64))
    with pytest.raises(TypeError, match="int8"):
        cpu.int8_column_sum(a)
    with pytest.raises(TypeError, match="int8"):
        cpu.pack_sign_bits_int8(a.float())
    with pytest.raises(ValueError, match="2-D"):
        cpu.pack_sign_bits_int8(torch.zeros(5, dtype=torch.int8))
    if torch.backends.mps.is_available() or torch.cuda.is_available():
        dev = "cuda" if torch.cuda.is_available() else "mps"
        with pytest.raises(ValueError, match="CPU"):
            cpu.bit_counts(a.to(dev))
    with pytest.raises(ValueError, match="CPU"):
        cpu.bit_counts(a.to("meta"))


def test_wrapper_accepts_non_contiguous():
    rng = np.random.default_rng(2)
    x = rand_packed(rng, 10, 640)
    xt = x[::2]
    assert not xt.is_contiguous()
    np.testing.assert_array_equal(cpu.hamming_matrix(xt, x).numpy(), cpu.reference_hamming_matrix(xt.contiguous(), x))
    np.testing.assert_array_equal(cpu.bit_counts(xt).numpy(), cpu.reference_bit_counts(xt.contiguous()))
    y = rand_int8(rng, 40, 30).T
    np.testing.assert_array_equal(cpu.int8_column_sum(y).numpy(), cpu.reference_int8_column_sum(y.contiguous()))
    np.testing.assert_array_equal(cpu.pack_sign_bits_int8(y).numpy(), cpu.reference_pack_sign_bits_int8(y.contiguous()))


@needs_native
def test_extension_rejects_bad_arguments():
    buf = torch.zeros((4, 4), dtype=torch.int64)
    p = buf.data_ptr()
    out = torch.zeros(1024, dtype=torch.int32)
    q = out.data_ptr()
    with pytest.raises(ValueError, match="n_a"):
        native.hamming_matrix(p, -1, p, 1, 4, q, 1)
    with pytest.raises(ValueError, match="n_b"):
        native.hamming_matrix(p, 1, p, -2, 4, q, 1)
    with pytest.raises(ValueError, match="words"):
        native.hamming_matrix(p, 1, p, 1, -4, q, 1)
    with pytest.raises(ValueError, match="a_ptr"):
        native.hamming_matrix(0, 1, p, 1, 4, q, 1)
    with pytest.raises(ValueError, match="b_ptr"):
        native.hamming_matrix(p, 1, 0, 1, 4, q, 1)
    with pytest.raises(ValueError, match="out_ptr"):
        native.hamming_matrix(p, 1, p, 1, 4, 0, 1)
    with pytest.raises(ValueError, match="a_ptr"):
        native.hamming_matrix(-5, 1, p, 1, 4, q, 1)
    with pytest.raises(TypeError):
        native.hamming_matrix("x", 1, p, 1, 4, q, 1)
    with pytest.raises(ValueError, match="x_ptr"):
        native.bit_counts(0, 4, 4, q, 1)
    with pytest.raises(ValueError, match="^n "):
        native.bit_counts(p, -1, 4, q, 1)
    with pytest.raises(ValueError, match="out_ptr"):
        native.bit_counts(p, 4, 4, 0, 1)
    with pytest.raises(ValueError, match="^d "):
        native.int8_column_sum(p, 4, -3, q, 1)
    with pytest.raises(ValueError, match="x_ptr"):
        native.int8_column_sum(0, 4, 3, q, 1)
    with pytest.raises(ValueError, match="words"):
        native.pack_sign_bits_int8(p, 2, 130, 2, q, 1)
    with pytest.raises(ValueError, match="out_ptr"):
        native.pack_sign_bits_int8(p, 2, 10, 1, 0, 1)
    # null pointers are fine when there is nothing to touch
    native.hamming_matrix(0, 0, 0, 0, 4, 0, 1)
    native.bit_counts(0, 0, 0, 0, 1)
    native.int8_column_sum(0, 0, 0, 0, 1)
    native.pack_sign_bits_int8(0, 0, 0, 0, 0, 1)
    assert isinstance(native.features(), str)


@pytest.mark.parametrize("use_native", [True, False])
def test_zero_width_inputs(monkeypatch, use_native):
    if not use_native:
        monkeypatch.setattr(cpu, "_native", None)
    e = torch.zeros((3, 0), dtype=torch.int64)
    e8 = torch.zeros((3, 0), dtype=torch.int8)
    assert torch.equal(cpu.hamming_matrix(e, e), torch.zeros((3, 3), dtype=torch.int32))
    assert cpu.bit_counts(e).shape == (0,)
    assert cpu.int8_column_sum(e8).shape == (0,)
    assert cpu.pack_sign_bits_int8(e8).shape == (3, 0)
    assert cpu.pack_sign_bits_int8(torch.zeros((0, 5), dtype=torch.int8)).shape == (0, 1)


@pytest.mark.parametrize("n_q", [0, 1, 16, 17, 40])
def test_int8_dot_matrix_is_the_exact_int32_product(n_q):
    """dispatch.int8_dot_matrix (the int8 GEMM the CUDA path and hdc-bench use) on CPU, small batches padded."""
    from hd_compute.kernels import dispatch

    generator = torch.Generator().manual_seed(n_q)
    a = torch.randint(-128, 128, (n_q, 200), dtype=torch.int8, generator=generator)
    b = torch.randint(-128, 128, (9, 200), dtype=torch.int8, generator=generator)
    got = dispatch.int8_dot_matrix(a, b)
    assert got.dtype == torch.int32 and got.shape == (n_q, 9)
    assert torch.equal(got, (a.to(torch.int64) @ b.to(torch.int64).T).to(torch.int32))
