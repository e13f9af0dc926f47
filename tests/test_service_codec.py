"""The request codec's own .npz reader and MAP check: the same arrays as numpy.load, the same refusals."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from hd_compute.service.codec import ApiError, _from_storage, _read_npz
from hd_compute.vsa import get_model


def npz(compressed: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


ARRAYS = {
    "i8": np.array([[1, -1, 1], [-1, -1, 1]], dtype=np.int8),
    "i64_big_endian": np.arange(12, dtype=">i8").reshape(3, 4),
    "f32_fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    "c64": np.array([1 + 0j, 0 + 1j], dtype=np.complex64),
    "scalar": np.array(7),
    "empty": np.zeros((0, 5), dtype=np.int8),
    "structured": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),  # a list descr: numpy's own parser
}


@pytest.mark.parametrize("compressed", [False, True])
def test_arrays_equal_numpy_load(compressed):
    raw = npz(compressed, **ARRAYS)
    got = _read_npz(raw, 1 << 20)
    with np.load(io.BytesIO(raw), allow_pickle=False) as expected:
        assert sorted(got) == sorted(expected.files)
        for key in expected.files:
            assert got[key].dtype == expected[key].dtype and got[key].shape == expected[key].shape, key
            assert np.array_equal(got[key], expected[key]), key
    assert got["f32_fortran"].flags.f_contiguous


def test_object_arrays_are_refused_never_unpickled():
    raw = npz(bad=np.array([{"x": 1}, None], dtype=object))
    with pytest.raises(ApiError) as err:
        _read_npz(raw, 1 << 20)
    assert err.value.status == 400 and err.value.field == "bad" and "object" in err.value.detail.lower()


def test_truncated_member_and_corrupt_archive_are_400():
    good = npz(q=np.ones((4, 8), dtype=np.int8))
    # a member whose data is shorter than its header says
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        member = io.BytesIO()
        np.save(member, np.ones((4, 8), dtype=np.int8))
        archive.writestr("q.npy", member.getvalue()[:-3])
    with pytest.raises(ApiError) as err:
        _read_npz(buf.getvalue(), 1 << 20)
    assert err.value.status == 400 and err.value.field == "q"
    # flipped bytes inside the stored data: the zip CRC catches them
    corrupt = bytearray(good)
    corrupt[good.index(b"\x01\x01\x01\x01")] = 0x05
    with pytest.raises(ApiError) as err:
        _read_npz(bytes(corrupt), 1 << 20)
    assert err.value.status == 400 and err.value.error == "malformed_body"
    # not a .npy member at all
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("q.npy", b"hello")
    with pytest.raises(ApiError) as err:
        _read_npz(buf.getvalue(), 1 << 20)
    assert err.value.field == "q"


def test_unpacked_size_counts_against_the_limit():
    raw = npz(True, q=np.ones((100, 100), dtype=np.int8))
    assert len(raw) < 2000
    with pytest.raises(ApiError) as err:
        _read_npz(raw, 5000)
    assert err.value.status == 413


@pytest.mark.parametrize("dtype", [np.int8, np.float32])
def test_map_values_other_than_plus_minus_one_are_refused(dtype):
    model = get_model("MAP")
    ok = np.array([[1, -1, -1, 1]], dtype=dtype)
    hv = _from_storage(ok, "queries", model, 4, 4)
    assert hv.data.tolist() == ok.tolist()
    ok[0, 0] = -1  # the hypervector owns its data: the request buffer can change without touching it
    assert hv.data[0, 0].item() == 1
    for bad in (0, 2, -128 if dtype == np.int8 else 0.5):
        arr = ok.copy()
        arr[0, 2] = bad
        with pytest.raises(ApiError) as err:
            _from_storage(arr, "queries", model, 4, 4)
        assert err.value.field == "queries" and "+1 and -1" in err.value.detail


def test_plain_archives_take_the_direct_path_and_others_still_read():
    from hd_compute.service.codec import _stored_members

    raw = npz(q=np.ones((2, 3), dtype=np.int8), k=np.array(3))
    members = _stored_members(raw)
    assert members is not None and sorted(name for name, _ in members) == ["k.npy", "q.npy"]
    # a comment, or compressed members: zipfile reads them, with the same result
    buf = io.BytesIO(raw)
    with zipfile.ZipFile(buf, "a") as archive:
        archive.comment = b"hello"
    assert _stored_members(buf.getvalue()) is None
    assert _stored_members(npz(True, q=np.ones(3))) is None
    for body in (buf.getvalue(), npz(True, q=np.ones((2, 3), dtype=np.int8), k=np.array(3))):
        got = _read_npz(body, 1 << 20)
        assert got["q"].tolist() == [[1, 1, 1], [1, 1, 1]] and int(got["k"]) == 3


def test_damaged_archives_are_400_never_a_crash():
    """Every single-byte change and every truncation of a valid body: the same arrays, or a 400/413."""
    raw = npz(q=np.arange(24, dtype=np.int16).reshape(4, 6), k=np.array(5))
    rng = np.random.default_rng(0)
    bodies = [raw[:n] for n in range(0, len(raw), 7)]
    for pos in range(len(raw)):
        damaged = bytearray(raw)
        damaged[pos] = (damaged[pos] + int(rng.integers(1, 256))) % 256
        bodies.append(bytes(damaged))
    for body in bodies:
        try:
            got = _read_npz(body, 1 << 20)
        except ApiError as exc:
            assert exc.status in (400, 413)
            continue
        for key, value in got.items():  # an accepted body reads as numpy reads it
            with np.load(io.BytesIO(body), allow_pickle=False) as expected:
                assert np.array_equal(value, expected[key])


def test_bsc_padding_bits_are_refused():
    model = get_model("BSC")
    words = np.zeros((2, 2), dtype=np.int64)  # dimension 100: 64 + 36 bits
    words[1, 1] = (1 << 35) | 1
    assert _from_storage(words, "a", model, 100, 100).data.tolist() == words.tolist()
    for bit in (36, 63):
        bad = words.copy()
        bad[0, 1] = np.int64(1 << bit) if bit < 63 else np.int64(-(1 << 63))
        with pytest.raises(ApiError) as err:
            _from_storage(bad, "a", model, 100, 100)
        assert err.value.field == "a" and "padding" in err.value.detail
    full = np.full((1, 2), -1, dtype=np.int64)  # dimension 128: every bit is a dimension
    assert _from_storage(full, "a", model, 128, 128).data.tolist() == full.tolist()
