"""CUDA gives the same results as the CPU (skipped where no CUDA device is present)."""

import pytest
import torch

import hd_compute as hc
from hd_compute.kernels import cpu as cpu_kernels
from hd_compute.kernels import dispatch
from hd_compute.structures import ItemMemory

pytestmark = pytest.mark.gpu

MODELS = ["MAP", "BSC", "HRR", "FHRR"]
DIMS = [1, 63, 100, 1000, 10_000]


def both(make, *args, **kwargs):
    return make(*args, device="cpu", **kwargs), make(*args, device="cuda", **kwargs)


def same(cpu_hv, gpu_hv, vsa):
    assert gpu_hv.device.type == "cuda"
    if vsa in ("MAP", "BSC"):
        assert torch.equal(gpu_hv.data.cpu(), cpu_hv.data)
    else:
        torch.testing.assert_close(gpu_hv.data.cpu(), cpu_hv.data, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("vsa", MODELS)
@pytest.mark.parametrize("dim", DIMS)
def test_algebra_matches_cpu(vsa, dim):
    ac, ag = both(hc.random, 40, dim, vsa, seed=1)
    bc, bg = both(hc.random, 40, dim, vsa, seed=2)
    same(ac, ag, vsa)  # a seed gives the same vectors on every device
    same(hc.bind(ac, bc), hc.bind(ag, bg), vsa)
    same(hc.unbind(ac, bc), hc.unbind(ag, bg), vsa)
    same(hc.inverse(ac), hc.inverse(ag), vsa)
    same(hc.permute(ac, 17), hc.permute(ag, 17), vsa)
    same(hc.permute(ac, -dim - 3), hc.permute(ag, -dim - 3), vsa)
    same(hc.multiset(ac), hc.multiset(ag), vsa)
    same(hc.multiset(ac[:6]), hc.multiset(ag[:6]), vsa)  # even count: tie-break
    same(hc.multiset(ac.reshape(4, 10)), hc.multiset(ag.reshape(4, 10)), vsa)
    same(hc.bundle(ac, bc), hc.bundle(ag, bg), vsa)
    same(hc.identity(3, dim, vsa, device="cpu"), hc.identity(3, dim, vsa, device="cuda"), vsa)
    for make in (hc.level, hc.circular):
        same(*both(make, 9, dim, vsa, seed=3), vsa)
    same(*both(hc.thermometer, 9, dim, vsa), vsa)
    same(hc.ngrams(ac.reshape(4, 10), 3), hc.ngrams(ag.reshape(4, 10), 3), vsa)


@pytest.mark.parametrize("vsa", MODELS)
@pytest.mark.parametrize("dim", DIMS)
def test_similarities_match_cpu(vsa, dim):
    ac, ag = both(hc.random, 37, dim, vsa, seed=4)
    bc, bg = both(hc.random, 45, dim, vsa, seed=5)
    exact = vsa in ("MAP", "BSC")
    for fn in (hc.cosine_similarity, hc.dot_similarity):
        c, g = fn(ac, bc), fn(ag, bg).cpu()
        if exact:
            assert torch.equal(g, c), fn.__name__
        else:
            torch.testing.assert_close(g, c, rtol=1e-3, atol=1e-4)
    if exact:
        assert torch.equal(hc.hamming_similarity(ag, bg).cpu(), hc.hamming_similarity(ac, bc))


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("rows", [(1, 1), (3, 5), (17, 9), (100, 33)])
def test_bsc_hamming_int8_gemm_equals_cpu_popcount(dim, rows):
    a = hc.random(rows[0], dim, "BSC", seed=6).data
    b = hc.random(rows[1], dim, "BSC", seed=7).data
    reference = torch.from_numpy(cpu_kernels.reference_hamming_matrix(a, b))
    assert torch.equal(dispatch.hamming_matrix(a, b), reference)  # CPU popcount
    assert torch.equal(dispatch.hamming_matrix(a.cuda(), b.cuda()).cpu(), reference)  # CUDA int8 GEMM


@pytest.mark.parametrize("dim", DIMS)
def test_map_int8_dot_equals_cpu(dim):
    a = hc.random(50, dim, "MAP", seed=8)
    b = hc.random(21, dim, "MAP", seed=9)
    reference = (a.data.float() @ b.data.float().T).to(torch.int32)
    assert torch.equal(dispatch.int8_dot_matrix(a.data.cuda(), b.data.cuda()).cpu(), reference)
    assert torch.equal(hc.dot_similarity(a.to("cuda"), b.to("cuda")).cpu().to(torch.int32), reference)
    assert torch.equal(hc.dot_similarity(a, b).to(torch.int32), reference)


def test_seeded_generator_on_cuda():
    g1 = torch.Generator(device="cuda").manual_seed(3)
    g2 = torch.Generator(device="cuda").manual_seed(3)
    x = hc.random(4, 100, "MAP", generator=g1, device="cuda")
    assert torch.equal(x.data, hc.random(4, 100, "MAP", generator=g2, device="cuda").data)
    with pytest.raises(ValueError, match="generator is on"):
        hc.random(4, 100, "MAP", generator=torch.Generator(), device="cuda")


@pytest.mark.parametrize("vsa", MODELS)
def test_item_memory_search_matches_cpu(vsa):
    items = hc.random(500, 1000, vsa, seed=10)
    queries = hc.cat([items[:5], hc.random(200, 1000, vsa, seed=11)])
    results = []
    for device in ("cpu", "cuda"):
        memory = ItemMemory(1000, vsa, device=device, initial_capacity=8, max_chunk_bytes=4 * 205 * 64)
        memory.add(items[:123].to(device))
        memory.add(items[123:].to(device))
        results.append(memory.search(queries.to(device), k=4))
    cpu_result, gpu_result = results
    assert gpu_result.indices.device.type == "cuda"
    torch.testing.assert_close(gpu_result.similarities.cpu(), cpu_result.similarities, rtol=1e-4, atol=1e-5)
    if vsa in ("MAP", "BSC"):
        assert torch.equal(gpu_result.similarities.cpu(), cpu_result.similarities)
    # where there is no tie at the top, the ids are the same
    assert torch.equal(gpu_result.indices[:5, 0].cpu(), torch.arange(5))
    clear = cpu_result.similarities[:, 0] > cpu_result.similarities[:, 1] + 1e-4
    assert torch.equal(gpu_result.indices[clear, 0].cpu(), cpu_result.indices[clear, 0])


def test_encoders_match_cpu():
    from hd_compute.encoders import IDLevelEncoder

    x = torch.rand(33, 20, generator=torch.Generator().manual_seed(12))
    for vsa in MODELS:
        cpu_hv = IDLevelEncoder(20, 777, vsa, device="cpu")(x)
        gpu_hv = IDLevelEncoder(20, 777, vsa, device="cuda")(x)
        same(cpu_hv, gpu_hv, vsa)
