"""ItemMemory (chunked top-k search) and the Centroid classifier."""

import pytest
import torch

import hd_compute as hc
from hd_compute.models import Centroid
from hd_compute.structures import ItemMemory

MODELS = ["MAP", "BSC", "HRR", "FHRR"]


def assert_topk_matches_bruteforce(result, queries, items, k):
    """The search result is a correct top-k of cosine_similarity (ties may come in any order)."""
    brute = hc.cosine_similarity(queries, items)  # (Q, N)
    expected = brute.topk(k, dim=-1)
    torch.testing.assert_close(result.similarities, expected.values, rtol=0, atol=1e-6)
    # each returned id really has the returned similarity, ids are distinct
    torch.testing.assert_close(brute.gather(-1, result.indices), result.similarities, rtol=0, atol=1e-6)
    assert (result.indices.sort(dim=-1).values.diff(dim=-1) > 0).all()
    # where there is no tie at the k-th place, the id sets are equal
    values = brute.sort(dim=-1, descending=True).values
    no_tie = values[:, k - 1] > values[:, k] if values.shape[-1] > k else torch.ones(len(values), dtype=torch.bool)
    same = result.indices.sort(-1).values == expected.indices.sort(-1).values
    assert same[no_tie].all()


@pytest.mark.parametrize("vsa", MODELS)
def test_item_memory_add_grow_get(vsa):
    memory = ItemMemory(100, vsa, initial_capacity=4)
    batches = [hc.random(n, 100, vsa, seed=n) for n in (3, 1, 10, 50)]
    ids = [memory.add(b) for b in batches]
    single = hc.random((), 100, vsa, seed=99)
    ids.append(memory.add(single))
    assert len(memory) == 65
    assert torch.equal(torch.cat(ids), torch.arange(65))
    everything = hc.cat(batches + [single.reshape(1)])
    assert torch.equal(memory.vectors.data, everything.data)
    assert torch.equal(memory.get([4, 0, 64]).data, everything.data[[4, 0, 64]])
    assert torch.equal(memory.get(torch.tensor([13])).data, batches[2].data[9:10])
    with pytest.raises(IndexError):
        memory.get([65])
    with pytest.raises(IndexError):
        memory.get([-1])


@pytest.mark.parametrize("vsa", MODELS)
def test_item_memory_search_chunked(vsa):
    dim, n_items, k = 96, 333, 5
    items = hc.random(n_items, dim, vsa, seed=1)
    # item chunk = max_chunk_bytes // (4 * query_chunk): 40 kB with 300 queries -> 33 items per chunk
    memory = ItemMemory(dim, vsa, initial_capacity=16, max_chunk_bytes=40_000)
    memory.add(items[:100])
    memory.add(items[100:])
    queries = hc.cat([items[[3, 150, 332]], hc.random(297, dim, vsa, seed=2)])
    result = memory.search(queries, k=k)
    assert result.similarities.shape == (300, k) and result.indices.shape == (300, k)
    assert result.indices.dtype == torch.int64
    assert_topk_matches_bruteforce(result, queries, items, k)
    # stored items find themselves first
    assert result.indices[:3, 0].tolist() == [3, 150, 332]
    # k == len(memory) and k = 1
    assert_topk_matches_bruteforce(memory.search(queries[:20], k=n_items), queries[:20], items, n_items)
    assert_topk_matches_bruteforce(memory.search(queries, k=1), queries, items, 1)
    # a single query gives (k,) results; a 2-D batch of queries keeps its shape
    one = memory.search(queries[5], k=3)
    assert one.indices.shape == (3,)
    assert torch.equal(one.indices, result.indices[5, :3])
    grid = memory.search(queries[:12].reshape(3, 4), k=2)
    assert grid.indices.shape == (3, 4, 2)
    assert torch.equal(grid.indices.reshape(12, 2), memory.search(queries[:12], k=2).indices)


@pytest.mark.parametrize("vsa", MODELS)
def test_item_memory_search_many_query_chunks(vsa):
    """More than 4096 queries are searched in several query chunks (and, here, several item chunks)."""
    dim = 64
    items = hc.random(120, dim, vsa, seed=3)
    memory = ItemMemory(dim, vsa, max_chunk_bytes=4 * 4096 * 50)  # 50 items per chunk
    memory.add(items)
    queries = hc.random(9000, dim, vsa, seed=4)
    result = memory.search(queries, k=3)
    assert_topk_matches_bruteforce(result, queries, items, 3)
    small = ItemMemory(dim, vsa)  # one chunk
    small.add(items)
    torch.testing.assert_close(small.search(queries, k=3).similarities, result.similarities, rtol=0, atol=0)


def test_item_memory_search_errors():
    memory = ItemMemory(64, "MAP")
    query = hc.random(2, 64, "MAP", seed=1)
    with pytest.raises(ValueError, match="empty"):
        memory.search(query)
    memory.add(hc.random(3, 64, "MAP", seed=2))
    with pytest.raises(ValueError, match="k=4"):
        memory.search(query, k=4)
    with pytest.raises(ValueError, match="k must be a positive"):
        memory.search(query, k=0)
    with pytest.raises(ValueError, match="dim"):
        memory.search(hc.random(2, 65, "MAP", seed=1))
    with pytest.raises(ValueError, match="items.*BSC|BSC.*memory"):
        memory.add(hc.random(2, 64, "BSC", seed=1))
    with pytest.raises(TypeError, match="queries"):
        memory.search(query.data)


@pytest.mark.parametrize("vsa", MODELS)
def test_item_memory_state_dict_round_trip(vsa):
    memory = ItemMemory(200, vsa, initial_capacity=2)
    memory.add(hc.random(37, 200, vsa, seed=5))
    state = memory.state_dict()
    assert state["vsa"] == vsa and state["dim"] == 200
    restored = ItemMemory.from_state_dict(state)
    assert len(restored) == 37
    assert restored.dtype == memory.dtype
    assert torch.equal(restored.vectors.data, memory.vectors.data)
    queries = hc.random(8, 200, vsa, seed=6)
    a, b = memory.search(queries, k=4), restored.search(queries, k=4)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.similarities, b.similarities)
    # the state is a copy: changing the memory afterwards does not change it
    memory.add(hc.random(1, 200, vsa, seed=7))
    assert state["vectors"].shape[0] == 37


# --- Centroid ---------------------------------------------------------------------------------------------------


def noisy_copies(prototypes: hc.Hypervectors, per_class: int, flip: float, seed: int):
    """MAP samples: each class prototype with a fraction `flip` of its dimensions negated."""
    g = torch.Generator().manual_seed(seed)
    n_classes, dim = prototypes.shape[0], prototypes.dim
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    base = prototypes.data[labels].float()
    signs = torch.where(torch.rand(len(labels), dim, generator=g) < flip, -1.0, 1.0)
    return hc.Hypervectors((base * signs).to(torch.int8), "MAP", dim), labels


def test_centroid_fit_predict():
    protos = hc.random(4, 1000, "MAP", seed=1)
    x, y = noisy_copies(protos, 30, 0.3, seed=2)
    model = Centroid(4, 1000).fit(x, y)
    assert model.weights.shape == (4, 1000)
    assert model.score(x, y) == 1.0
    x_test, y_test = noisy_copies(protos, 10, 0.3, seed=3)
    assert torch.equal(model.predict(x_test), y_test)
    proba = model.predict_proba(x_test)
    assert proba.shape == (40, 4)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(40))
    assert torch.equal(proba.argmax(dim=1), model.predict(x_test))
    # dense tensors work as well as Hypervectors
    assert torch.equal(model.predict(x_test.dense()), y_test)
    # partial_fit in two halves gives the same prototypes as fit
    halves = Centroid(4, 1000)
    halves.partial_fit(x[:60], y[:60]).partial_fit(x[60:], y[60:])
    torch.testing.assert_close(halves.weights, model.weights)


@pytest.mark.parametrize("vsa", MODELS)
def test_centroid_all_models(vsa):
    protos = hc.random(3, 512, vsa, seed=4)
    # samples: each prototype bundled with two random vectors
    noise = hc.random((3, 10, 2), 512, vsa, seed=5)
    stacked = torch.cat([protos.data[:, None, None, :].expand(3, 10, 1, -1), noise.data], dim=2)
    x = hc.multiset(hc.Hypervectors(stacked, vsa, 512)).reshape(30)
    y = torch.arange(3).repeat_interleave(10)
    model = Centroid(3, 512).fit(x, y)
    assert model.score(x, y) == 1.0
    torch.testing.assert_close(model.predict_proba(x).sum(1), torch.ones(30))


def test_centroid_adaptive_improves_training_accuracy():
    # a hard toy problem: two pairs of close classes (classes 2k and 2k+1 share 80% of their prototype)
    dim = 512
    base = hc.random(2, dim, "MAP", seed=7)
    delta = hc.random(4, dim, "MAP", seed=8)
    mask = torch.rand(4, dim, generator=torch.Generator().manual_seed(9)) < 0.2
    protos = torch.where(mask, delta.data, base.data.repeat_interleave(2, dim=0))
    x, y = noisy_copies(hc.Hypervectors(protos, "MAP", dim), 60, 0.42, seed=10)
    plain = Centroid(4, dim).fit(x, y)
    plain_accuracy = plain.score(x, y)
    assert plain_accuracy < 1.0  # room to improve
    adaptive = Centroid(4, dim).fit(x, y, adaptive=True, epochs=5)
    adaptive_accuracy = adaptive.score(x, y)
    print(f"centroid training accuracy: plain {plain_accuracy:.3f}, adaptive {adaptive_accuracy:.3f}")
    assert adaptive_accuracy >= plain_accuracy
    assert not torch.equal(adaptive.weights, plain.weights)


def test_centroid_bad_labels():
    x = hc.random(6, 64, "MAP", seed=1)
    model = Centroid(3, 64)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 3\)"):
        model.fit(x, torch.tensor([0, 1, 2, 3, 0, 1]))
    with pytest.raises(ValueError, match="y must hold labels"):
        model.fit(x, torch.tensor([0, 1, 2, -1, 0, 1]))
    with pytest.raises(TypeError, match="y must hold integer"):
        model.fit(x, torch.tensor([0.0, 1, 2, 0, 1, 2]))
    with pytest.raises(ValueError, match=r"y must have shape \(6,\)"):
        model.fit(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="y must have shape"):
        model.fit(x, torch.zeros(6, 1, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="not fitted"):
        Centroid(3, 64).predict(x)
    model.fit(x, [0, 1, 2, 0, 1, 2])  # a list of ints is fine
    with pytest.raises(ValueError, match="x has dim=65"):
        model.predict(hc.random(2, 65, "MAP", seed=1))
