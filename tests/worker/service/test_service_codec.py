"""The wire format (service/codec, npz, payload, responses): the .npz reader (zipfile + numpy.lib.format, sizes
enforced while reading), JSON vectors and fields (null, booleans, overflow), and the response encoder (the same
text as before, worst-case sizes that hold)."""

from __future__ import annotations

import asyncio
import io
import math
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import orjson
import pytest
import torch

import hd_compute.functional as F
from hd_compute.service.codec import INLINE_CODEC_MAX_BYTES, ApiError, hv_to_json
from hd_compute.service.npz import read_npy, read_npz
from hd_compute.service.payload import Payload, _from_storage
from hd_compute.service.responses import (
    JSON_PIECE_ELEMENTS,
    check_response_size,
    encode_json,
    encode_npz,
    hypervector_bytes,
    respond,
    response_size,
)
from hd_compute.vsa import get_model

MIB = 1 << 20


def npz(compressed: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def npy_header(descr: str, shape: tuple, *, spaced: bool = False) -> bytes:
    """A version 1.0 .npy header; `spaced` writes it in a spelling numpy.save never uses (the reader must not care)."""
    text = (
        f"{{ 'shape' : {shape!r} , 'descr' : '{descr}' , 'fortran_order' : False }}"
        if spaced
        else f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    )
    text += " " * (63 - (10 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def archive(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def refused(body: bytes, budget: int = MIB) -> ApiError:
    with pytest.raises(ApiError) as err:
        read_npz(body, budget)
    return err.value


def refused_with_peak(body: bytes, budget: int) -> tuple[ApiError, int]:
    """The refusal and the peak of Python memory allocated while reading to it."""
    tracemalloc.start()
    try:
        return refused(body, budget), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


ARRAYS = {
    "i8": np.array([[1, -1, 1], [-1, -1, 1]], dtype=np.int8),
    "i64_big_endian": np.arange(12, dtype=">i8").reshape(3, 4),
    "f32_fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    "c64": np.array([1 + 0j, 0 + 1j], dtype=np.complex64),
    "scalar": np.array(7),
    "empty": np.zeros((0, 5), dtype=np.int8),
    "keys": np.array(["a", "bcd"]),
}


@pytest.mark.parametrize("compressed", [False, True])
def test_arrays_equal_numpy_load(compressed):
    raw = npz(compressed, **ARRAYS)
    got = read_npz(raw, MIB)
    with np.load(io.BytesIO(raw), allow_pickle=False) as expected:
        assert sorted(got) == sorted(expected.files)
        for key in expected.files:
            assert got[key].dtype == expected[key].dtype and got[key].shape == expected[key].shape, key
            assert np.array_equal(got[key], expected[key]), key
    assert got["f32_fortran"].flags.f_contiguous


def test_a_header_in_any_spelling_numpy_reads_is_read():
    data = np.arange(6, dtype="<i2").tobytes()
    got = read_npz(archive({"q.npy": npy_header("<i2", (2, 3), spaced=True) + data}), MIB)
    assert got["q"].tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("dtype", [object, [("a", "<i4"), ("b", "<f8")], "S3", "M8[s]", "V8"])
def test_only_numbers_and_text_are_accepted(dtype):
    value = np.array([{"x": 1}, None], dtype=object) if dtype is object else np.zeros(2, dtype=dtype)
    err = refused(npz(bad=value))
    assert err.status == 400 and err.field == "bad" and "not accepted" in err.detail


def test_a_declared_size_over_the_budget_is_413_before_anything_is_allocated():
    """The probe: a header declaring shape 1e12 (in a spelling numpy.save does not write) used to be a MemoryError."""
    body = archive({"q.npy": npy_header("<f8", (10**12,), spaced=True) + b"\0" * 64})
    err, peak = refused_with_peak(body, 64 * MIB)
    assert err.status == 413 and err.error == "body_too_large" and "q" in err.detail
    assert peak < MIB
    # members share one budget: two arrays that fit alone do not fit together
    assert read_npz(npz(a=np.zeros(600, dtype=np.int8)), 1000)["a"].size == 600
    assert refused(npz(a=np.zeros(600, dtype=np.int8), b=np.zeros(600, dtype=np.int8)), 1000).status == 413


def zip_bomb(declared_shape: tuple, unpacked_bytes: int) -> bytes:
    """A deflated member: an int8 .npy header declaring `declared_shape`, then `unpacked_bytes` of zeros."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("q.npy", "w", force_zip64=True) as member:
            member.write(npy_header("|i1", declared_shape))
            chunk = bytes(MIB)
            for _ in range(unpacked_bytes // MIB):
                member.write(chunk)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return zip_bomb((16,), 256 * MIB)


def test_a_zip_bomb_is_refused_after_reading_what_its_header_declares(bomb):
    assert len(bomb) < MIB
    err, peak = refused_with_peak(bomb, 64 * MIB)
    assert err.status == 400 and err.field == "q" and "more data than" in err.detail
    assert peak < 4 * MIB  # one read chunk, not the 256 MiB it unpacks to


def test_a_central_directory_that_lies_about_sizes_is_refused(bomb):
    """The probe of issue 18: the central directory and local header claim a tiny member that unpacks to 256 MiB.
    zipfile reads no more than the claimed size, the CRC or the .npy header gives the lie away."""
    lied = bytearray(bomb)
    offset = 0
    while (offset := lied.find(b"PK\x01\x02", offset)) >= 0:  # the central directory entry: sizes at +20 and +24
        struct.pack_into("<LL", lied, offset + 20, 100, 100)
        offset += 4
    for body in (bytes(lied), zip_bomb((256 * MIB,), 256 * MIB)):
        err = refused(body, 64 * MIB)
        assert err.status in (400, 413)


def test_short_long_corrupt_and_foreign_members_are_400():
    member = io.BytesIO()
    np.save(member, np.ones((4, 8), dtype=np.int8))
    good = member.getvalue()
    for data, words in (
        (good[:-3], "data end after"),
        (good + b"\x01", "more data than"),
        (b"hello", "not a readable .npy"),
        (good[:8], "not a readable .npy"),
    ):
        err = refused(archive({"q.npy": data}))
        assert (err.status, err.field) == (400, "q") and words in err.detail, err.detail
    # flipped bytes inside the stored data: the zip CRC catches them
    body = npz(q=np.ones((4, 8), dtype=np.int8))
    corrupt = bytearray(body)
    corrupt[body.index(b"\x01\x01\x01\x01")] = 0x05
    assert refused(bytes(corrupt)).error == "malformed_body"
    # a version numpy.save does not write with these headers, a negative length, two members of one name
    version3 = good[:6] + b"\x03\x00" + struct.pack("<I", len(good) - 10) + good[10:]
    assert "version 3.0" in refused(archive({"q.npy": version3})).detail
    assert "negative" in refused(archive({"q.npy": npy_header("|i1", (-4,))})).detail
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("q.npy", good)
        with pytest.warns(UserWarning):
            z.writestr("q.npy", good)
    assert "twice" in refused(buf.getvalue()).detail
    assert refused(archive({f"m{i}.npy": good for i in range(65)})).error == "malformed_body"
    assert refused(b"not a zip").error == "malformed_body"


def test_a_directory_no_request_needs_is_refused_before_zipfile_parses_it():
    """A body of nothing but central-directory entries: refused at the directory's size, before zipfile builds an
    object per entry; an archive with the longest comment a zip can have still reads."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(5000):
            z.writestr(f"m{i}.npy", b"")
    err, peak = refused_with_peak(buf.getvalue(), MIB)
    assert err.error == "malformed_body" and "directory" in err.detail
    assert peak < 4 * MIB
    member = io.BytesIO()
    np.save(member, np.arange(3))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.comment = b"x" * 65535
        z.writestr("q.npy", member.getvalue())
    assert read_npz(buf.getvalue(), MIB)["q"].tolist() == [0, 1, 2]


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
            got = read_npz(body, MIB)
        except ApiError as exc:
            assert exc.status in (400, 413)
            continue
        for key, value in got.items():  # an accepted body reads as numpy reads it
            with np.load(io.BytesIO(body), allow_pickle=False) as expected:
                assert np.array_equal(value, expected[key])


def test_deflate_streams_that_are_not_deflate_are_400():
    good = npz(True, q=np.arange(100, dtype=np.int64))
    local = good.index(b"PK\x03\x04")
    name_length, extra_length = struct.unpack_from("<HH", good, local + 26)
    start = local + 30 + name_length + extra_length  # the member's compressed data
    for garbage in (b"\xff" * 8, zlib.compress(b"x")[:4]):
        body = bytearray(good)
        body[start : start + len(garbage)] = garbage
        assert refused(bytes(body)).status == 400


@pytest.mark.parametrize("dtype", [np.int8, np.float32])
def test_map_values_other_than_plus_minus_one_are_refused(dtype):
    model = get_model("MAP")
    ok = np.array([[1, -1, -1, 1]], dtype=dtype)
    assert _from_storage(ok, "queries", model, 4, 4).data.tolist() == ok.tolist()
    for bad in (0, 2, -128 if dtype == np.int8 else 0.5):
        arr = ok.copy()
        arr[0, 2] = bad
        with pytest.raises(ApiError) as err:
            _from_storage(arr, "queries", model, 4, 4)
        assert err.value.field == "queries" and "+1 and -1" in err.value.detail


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


def test_binary_hrr_and_fhrr_values_are_validated_by_the_engine():
    for arr, vsa in (
        (np.array([[np.nan, 0.0]], dtype=np.float32), "HRR"),
        (np.array([[np.inf, 0.0]], dtype=np.float64), "HRR"),
        (np.array([[2 + 0j, 1j]], dtype=np.complex64), "FHRR"),
    ):
        with pytest.raises(ApiError) as err:
            _from_storage(arr, "x", get_model(vsa), 2, 2)
        assert err.value.status == 400 and err.value.field == "x"


# -- JSON fields ------------------------------------------------------------------------------------------------


def json_error(fn, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as err:
        fn(*args, **kwargs)
    return err.value


def test_null_is_refused_for_every_field():
    p = Payload({"k": None, "vsa": None, "vectors": None, "y": None, "partial": None, "lr": None, "keys": None})
    for call in (
        lambda: p.integer("k", 1),
        lambda: p.vsa("MAP"),
        lambda: p.decode_vectors("vectors", get_model("MAP"), None),
        lambda: p.labels("y"),
        lambda: p.flag("partial"),
        lambda: p.number("lr", 1.0),
        lambda: p.strings("keys"),
    ):
        err = json_error(call)
        assert err.status == 400 and "must not be null" in err.detail
        assert err.detail.split(":")[0] in p.fields
    assert Payload({}).integer("k", 1) == 1  # left out: the default


def test_integers_are_bounded_and_never_leak_a_python_error():
    assert Payload({"shifts": -(2**63)}).integer("shifts") == -(2**63)
    for value in (2**63, -(2**63) - 1, 10**30):
        assert "between" in json_error(Payload({"shifts": value}).integer, "shifts").detail
    for value in (1.5, "3", True, [1], {"a": 1}):
        err = json_error(Payload({"k": value}).integer, "k")
        assert err.detail.startswith("k: must be an integer") and "Error" not in err.detail
    assert Payload({"k": "12"}, binary=True).integer("k") == 12  # the query string of a binary body


@pytest.mark.parametrize(
    "value, words",
    [
        ([1, True, -1], "only numbers"),
        (["1", "-1"], "only numbers"),
        ([1, None], "only numbers"),
        ([[1, -1], [1]], "rectangular"),
        ([[1, -1], 1], "rectangular"),
        ([{"a": 1}], "only numbers"),
        ("1,-1", "must be a list"),
    ],
)
def test_json_vectors_hold_only_numbers_in_a_rectangle(value, words):
    err = json_error(Payload({"a": value}).decode_vectors, "a", get_model("MAP"), None)
    assert err.field == "a" and words in err.detail


def test_more_batch_axes_than_the_kernels_take_are_refused():
    deep, fine = [1, -1], [1, -1]
    for _ in range(17):
        deep = [deep]
    for _ in range(16):
        fine = [fine]
    assert Payload({"a": fine}).decode_vectors("a", get_model("BSC"), None).data.dim() == 17
    err = json_error(Payload({"a": deep}).decode_vectors, "a", get_model("BSC"), None)
    assert err.error == "invalid_shape" and "17 batch axes" in err.detail
    err = json_error(_from_storage, np.ones((1,) * 18 + (4,), dtype=np.int8), "x", get_model("MAP"), None, None)
    assert err.error == "invalid_shape" and err.field == "x"


@pytest.mark.parametrize("vsa", ["HRR", "FHRR"])
def test_json_values_beyond_float32_are_refused(vsa):
    big = [1e39, 0.0] if vsa == "HRR" else [[1e39, 0.0], [0.0, 1.0]]
    err = json_error(Payload({"x": big}).decode_vectors, "x", get_model(vsa), None)
    assert err.field == "x" and "float32" in err.detail


def test_labels_and_strings():
    assert Payload({"y": [0, 2]}).labels("y").tolist() == [0, 2]
    for bad in ([0, True], [0.0], [-1], [2**64 - 1], "0"):
        assert json_error(Payload({"y": bad}).labels, "y").field == "y"
    assert Payload({}, {"keys": np.array(["a", "b"])}, binary=True).strings("keys") == ["a", "b"]
    assert json_error(Payload({}, {"keys": np.array([1, 2])}, binary=True).strings, "keys").field == "keys"
    assert json_error(Payload({"keys": ["a", 1]}).strings, "keys").field == "keys"


# -- responses -------------------------------------------------------------------------------------------------


def old_json(fields: dict) -> bytes:
    """What the worker wrote before the piecewise encoder: orjson over tolist()."""

    def plain(v):
        if isinstance(v, torch.Tensor):
            return v.tolist()
        if isinstance(v, np.ndarray):
            return v.tolist()
        return hv_to_json(v) if hasattr(v, "vsa") else v

    return orjson.dumps({k: plain(v) for k, v in fields.items()})


@pytest.mark.parametrize("vsa", ["MAP", "BSC", "HRR", "FHRR"])
@pytest.mark.parametrize("num", [(), (3,), (2, 5), (JSON_PIECE_ELEMENTS // 50 + 7,)])
def test_json_responses_are_the_same_text_and_within_their_worst_case(vsa, num):
    hv = F.random(num, 100, vsa, seed=3)
    scores = torch.randn(*num, 4)
    fields = {
        "vsa": vsa,
        "shape": list(num),
        "vectors": hv,
        "similarities": scores,
        "score": scores.sum(),
        "indices": np.arange(math.prod(num) * 4).reshape(*num, 4),
        "keys": ["a", "é\n"] * 3,
    }
    body = encode_json(fields)
    assert body == old_json(fields)
    assert len(body) <= response_size(fields, binary=False)
    packed = encode_npz(fields)
    assert len(packed) <= response_size(fields, binary=True)
    assert math.prod(num) * hypervector_bytes(get_model(vsa), 100, True) <= response_size({"v": hv}, True)


def test_a_long_vector_is_written_in_pieces():
    v = np.random.default_rng(0).standard_normal(3 * JSON_PIECE_ELEMENTS + 5).astype(np.float32)
    assert encode_json({"v": v}) == orjson.dumps({"v": v.tolist()})


class FakeRequest:
    def __init__(self, accept: str = ""):
        self.headers = {"Accept": accept}


def test_the_final_guard_refuses_an_oversized_response_before_encoding():
    fields = {"similarities": np.zeros(1000, dtype=np.float32)}

    def answer(accept: str, limit: int):
        return asyncio.run(respond(FakeRequest(accept), None, fields, limit=limit))

    assert answer("", 30_000).status == 200
    err = json_error(answer, "", 20_000)
    assert (err.status, err.error, err.field) == (400, "response_too_large", "response")
    assert answer("application/x-npz", 20_000).content_type == "application/x-npz"
    err = json_error(check_response_size, "num", 10**9, 10**6, "1000 hypervectors")
    assert (err.status, err.error, err.field) == (400, "response_too_large", "num")
    assert INLINE_CODEC_MAX_BYTES < 10**6


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def test_a_lone_npy_body_is_read_with_the_same_refusals_as_an_archive_member():
    x = np.arange(12, dtype=">i8").reshape(3, 4)
    assert np.array_equal(read_npy(npy(x), "queries", MIB), x)
    cases = {
        "declares more than the budget": (npy_header("<f8", (10**12,), spaced=True) + b"\0" * 64, 413),
        "data shorter than declared": (npy(x)[:-1], 400),
        "data longer than declared": (npy(x) + b"\0", 400),
        "not an .npy": (b"PK\x03\x04 an archive", 400),
        "an object array": (npy_header("|O", (2,)) + b"\0" * 16, 400),
    }
    for case, (body, status) in cases.items():
        with pytest.raises(ApiError) as err:
            read_npy(body, "queries", MIB)
        assert err.value.status == status, case
        assert "queries" in err.value.detail, case
