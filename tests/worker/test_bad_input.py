"""Bad arguments raise a TypeError or ValueError whose message names the argument."""

import math

import pytest
import torch

import hd_compute as hc
from hd_compute.encoders import IDLevelEncoder, RandomProjectionEncoder
from hd_compute.models import Centroid
from hd_compute.structures import ItemMemory

D = 64


def rnd(num=3, dim=D, vsa="MAP", **kw):
    return hc.random(num, dim, vsa, seed=1, **kw)


BINARY_OPS = ["bind", "unbind", "bundle"]


@pytest.mark.parametrize("op", BINARY_OPS + ["cosine_similarity", "dot_similarity"])
def test_mismatched_dimension(op):
    fn = getattr(hc, op)
    with pytest.raises(ValueError, match=r"dim=64 but .*dim=65"):
        fn(rnd(), rnd(dim=65))


@pytest.mark.parametrize("op", BINARY_OPS + ["cosine_similarity", "dot_similarity"])
def test_mismatched_model(op):
    fn = getattr(hc, op)
    with pytest.raises(ValueError, match=r"is MAP but .* is BSC"):
        fn(rnd(), rnd(vsa="BSC"))


@pytest.mark.parametrize("op", BINARY_OPS + ["cosine_similarity"])
def test_mismatched_dtype(op):
    fn = getattr(hc, op)
    with pytest.raises(TypeError, match=r"a has dtype torch.int8 but b has torch.float32|input has dtype"):
        fn(rnd(), rnd(dtype=torch.float32))


@pytest.mark.gpu
def test_mismatched_device():
    with pytest.raises(ValueError, match=r"a is on cpu but b is on cuda"):
        hc.bind(rnd(), rnd(device="cuda"))
    with pytest.raises(ValueError, match=r"queries is on"):
        memory = ItemMemory(D, "MAP", device="cuda")
        memory.add(rnd(device="cuda"))
        memory.search(rnd())


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="device 'cuda'"):
        rnd(device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        rnd(device="tpu")


@pytest.mark.parametrize(
    "op,argname",
    [("bind", "a"), ("unbind", "a"), ("bundle", "a"), ("cosine_similarity", "input"), ("hamming_similarity", "input")],
)
def test_plain_tensor_instead_of_hypervectors(op, argname):
    fn = getattr(hc, op)
    x = rnd()
    with pytest.raises(TypeError, match=f"{argname} must be Hypervectors"):
        fn(x.data, x)
    second = {"a": "b", "input": "others"}[argname]
    with pytest.raises(TypeError, match=f"{second} must be Hypervectors"):
        fn(x, x.data)


@pytest.mark.parametrize("op", ["multiset", "inverse", "permute", "bind_sequence", "sequence", "ngrams"])
def test_plain_tensor_single_argument(op):
    with pytest.raises(TypeError, match="x must be Hypervectors"):
        getattr(hc, op)(rnd().data)


def test_wrong_types_elsewhere():
    x = rnd()
    with pytest.raises(TypeError, match="query must be Hypervectors"):
        hc.cleanup(x.data, x)
    with pytest.raises(TypeError, match="memory must be Hypervectors"):
        hc.cleanup(x, x.data)
    with pytest.raises(TypeError, match="keys must be Hypervectors"):
        hc.hash_table(x.data, x)
    with pytest.raises(TypeError, match="shifts must be an int"):
        hc.permute(x, 1.5)
    with pytest.raises(TypeError, match="threshold must be a finite number"):
        hc.cleanup(x, x, threshold=math.nan)
    with pytest.raises(TypeError, match="data must be a torch.Tensor"):
        hc.Hypervectors([1, -1], "MAP", 2)
    with pytest.raises(TypeError, match="data for MAP must have dtype"):
        hc.Hypervectors(torch.ones(3, D, dtype=torch.int32), "MAP", D)
    with pytest.raises(ValueError, match="data's last axis must have 1 elements"):
        hc.Hypervectors(torch.zeros(3, 2, dtype=torch.int64), "BSC", D)
    with pytest.raises(TypeError, match="dtype for MAP must be one of"):
        rnd(dtype=torch.float64)
    with pytest.raises(TypeError, match="seed must be an int"):
        hc.random(3, D, seed=1.0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        hc.random(3, D, generator=1)
    with pytest.raises(ValueError, match="seed or generator"):
        hc.random(3, D, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="x must be Hypervectors or a"):
        Centroid(2, D).fit([[1.0] * D], [0])
    with pytest.raises(TypeError, match="items must be Hypervectors"):
        ItemMemory(D).add(x.data)


@pytest.mark.parametrize("dim", [0, -5])
@pytest.mark.parametrize("make", [hc.random, hc.identity, hc.level, hc.circular, hc.thermometer])
def test_dim_not_positive(make, dim):
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        make(3, dim, "MAP")


@pytest.mark.parametrize("dim", [0, -1, 2.5, True])
def test_dim_not_positive_classes(dim):
    for build in (
        lambda: ItemMemory(dim),
        lambda: Centroid(2, dim),
        lambda: IDLevelEncoder(3, dim),
        lambda: RandomProjectionEncoder(3, dim),
        lambda: hc.Hypervectors(torch.ones(1, dtype=torch.int8), "MAP", dim),
    ):
        with pytest.raises((ValueError, TypeError), match="dim must be"):
            build()


def test_num_negative():
    for make in (hc.random, hc.identity):
        with pytest.raises(ValueError, match=r"num must be >= 0, got -1"):
            make(-1, D)
        with pytest.raises(ValueError, match=r"num\[1\] must be >= 0"):
            make((2, -3), D)
        with pytest.raises(TypeError, match="num must be an int or a tuple"):
            make(2.0, D)
    for make in (hc.level, hc.circular, hc.thermometer):
        with pytest.raises(ValueError, match="num must be a positive integer"):
            make(-2, D)
    # zero is a valid (empty) batch for random and identity
    assert hc.random(0, D).shape == (0,)


@pytest.mark.parametrize("name", ["XOR", "", "map2"])
def test_unknown_vsa(name):
    with pytest.raises(ValueError, match=r"vsa must be one of MAP, BSC, HRR, FHRR"):
        hc.random(3, D, name)
    with pytest.raises(ValueError, match="vsa must be one of"):
        ItemMemory(D, name)
    with pytest.raises(ValueError, match="vsa must be one of"):
        IDLevelEncoder(3, D, name)


def test_vsa_wrong_type():
    with pytest.raises(TypeError, match="vsa must be one of"):
        hc.random(3, D, 3)


def test_lowercase_vsa_name_accepted():
    assert hc.random(2, D, "bsc", seed=1).vsa.name == "BSC"


@pytest.mark.parametrize("encoder_cls", [IDLevelEncoder, RandomProjectionEncoder])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_encoder_rejects_non_finite(encoder_cls, bad):
    x = torch.rand(4, 5)
    x[2, 3] = bad
    with pytest.raises(ValueError, match=r"x contains NaN or infinity \(first at row 2, column 3\)"):
        encoder_cls(5, D)(x)


@pytest.mark.parametrize("encoder_cls", [IDLevelEncoder, RandomProjectionEncoder])
def test_encoder_shape_errors(encoder_cls):
    encoder = encoder_cls(5, D)
    with pytest.raises(ValueError, match="x must have 5 features"):
        encoder(torch.rand(4, 6))
    with pytest.raises(ValueError, match="x is an empty batch"):
        encoder(torch.rand(0, 5))
    with pytest.raises(ValueError, match="x must be 2-D"):
        encoder(torch.rand(5))
    with pytest.raises(ValueError, match="x must be 2-D"):
        encoder(torch.rand(2, 3, 5))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        encoder(torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        encoder(torch.ones(2, 5, dtype=torch.complex64))
    with pytest.raises(TypeError, match="x must be a 2-D array of numbers"):
        encoder([["a"] * 5])


def test_encoder_constructor_errors():
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        IDLevelEncoder(0, D)
    with pytest.raises(ValueError, match="levels must be a positive integer"):
        IDLevelEncoder(3, D, levels=0)
    with pytest.raises(ValueError, match="low and high"):
        IDLevelEncoder(3, D, low=1.0, high=1.0)
    with pytest.raises(ValueError, match="max_chunk_bytes must be a positive integer"):
        IDLevelEncoder(3, D, max_chunk_bytes=0)


def test_empty_batches():
    empty = hc.random((0,), D)
    with pytest.raises(ValueError, match="x is an empty batch"):
        hc.multiset(empty)
    with pytest.raises(ValueError, match="x is an empty batch"):
        hc.multiset(hc.random((3, 0), D))
    with pytest.raises(ValueError, match="x must have a batch axis"):
        hc.multiset(hc.random((), D))
    with pytest.raises(ValueError, match="x must be a non-empty sequence"):
        hc.sequence(empty)
    with pytest.raises(ValueError, match="x must be a non-empty sequence"):
        hc.bind_sequence(empty)
    with pytest.raises(ValueError, match="memory must be a non-empty"):
        hc.cleanup(rnd(), empty)
    model = Centroid(2, D)
    with pytest.raises(ValueError, match="x is an empty batch"):
        model.fit(empty, torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="x is an empty batch"):
        model.fit(torch.zeros(0, D), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 64\)"):
        model.fit(torch.zeros(3, D + 1), torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize("op", BINARY_OPS)
def test_non_broadcastable(op):
    with pytest.raises(ValueError, match=r"batch shapes of a \(3,\) and b \(4,\) do not broadcast"):
        getattr(hc, op)(rnd(3), rnd(4))
    with pytest.raises(ValueError, match=r"batch shapes of a \(2, 3\) and b \(2, 2\)"):
        getattr(hc, op)(rnd((2, 3)), rnd((2, 2)))


def test_similarity_others_shape_and_hash_table_lengths():
    with pytest.raises(ValueError, match="others must be one hypervector or a 1-D batch"):
        hc.cosine_similarity(rnd(), rnd((2, 2)))
    with pytest.raises(ValueError, match=r"keys \(3,\) and values \(4,\)"):
        hc.hash_table(rnd(3), rnd(4))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        hc.ngrams(rnd(5), 0)


def test_invalid_values_rejected_with_validate():
    data = torch.ones(2, D, dtype=torch.int8)
    data[0, 3] = 0
    with pytest.raises(ValueError, match="MAP hypervectors must hold only"):
        hc.Hypervectors(data, "MAP", D, validate=True)
    with pytest.raises(ValueError, match="dense values for MAP must be"):
        hc.Hypervectors.from_dense(torch.tensor([1.0, 0.5]), "MAP")
    with pytest.raises(TypeError, match="dense values for FHRR must be complex"):
        hc.Hypervectors.from_dense(torch.tensor([1.0, -1.0]), "FHRR")
    with pytest.raises(ValueError, match="FHRR hypervectors must hold unit-magnitude"):
        hc.Hypervectors(torch.full((1, 4), 2 + 0j, dtype=torch.complex64), "FHRR", 4, validate=True)
    with pytest.raises(ValueError, match="HRR hypervectors must hold finite"):
        hc.Hypervectors(torch.tensor([[math.nan, 0.0]]), "HRR", 2, validate=True)


def test_centroid_input_errors():
    model = Centroid(2, D)
    with pytest.raises(ValueError, match="x contains NaN or infinity"):
        model.fit(torch.full((2, D), math.nan), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        Centroid(0, D)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        Centroid(2, D, temperature=0)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        model.fit(rnd(2), torch.tensor([0, 1]), epochs=0)
