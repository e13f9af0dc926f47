"""The seed document's baseline cases, for MAP and BSC, ours against torchhd on the same data.

bundle_10k_vectors    multiset of 10,000 hypervectors, D=10,000
bind_32k_dimension    1,000 pairs bound at D=32,768
similarity_batch_1000 1,000 queries x 1,000 items, D=10,000 (MAP: cosine; BSC: Hamming)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

import hd_compute as hd
from hd_compute.hypervectors import Hypervectors

# The seed's absolute baselines (docs: ../shared/seed, "Performance Baselines").
MAX_LATENCY_MS = {"bundle_10k_vectors": 50.0, "bind_32k_dimension": 10.0, "similarity_batch_1000": 100.0}
MAX_MEMORY_MB = {"bind_32k_dimension": 256.0}

# Ratio floors (torchhd seconds / ours) that the engine issue sets for a 2-core CPU.
RATIO_FLOORS = {
    ("MAP", "bundle_10k_vectors", "multiset"): 1.0,
    ("BSC", "bundle_10k_vectors", "multiset"): 5.0,
    ("MAP", "bind_32k_dimension", "bind"): 1.0,
    ("BSC", "bind_32k_dimension", "bind"): 1.0,
    ("MAP", "similarity_batch_1000", "cosine_similarity"): 1.0,
    ("BSC", "similarity_batch_1000", "dot_similarity"): 5.0,
    ("BSC", "similarity_batch_1000", "hamming_similarity"): 100.0,
}

# torchhd's hamming_similarity materializes queries x items x D booleans; run it on this many queries at a
# time (the same total work, bounded memory).
TORCHHD_HAMMING_QUERY_CHUNK = 100


@dataclass
class Case:
    name: str
    vsa: str
    ours: Callable[[], object]
    bytes_moved: int
    baselines: dict[str, Callable[[], object]] = field(default_factory=dict)
    repeats_override: dict[str, int] = field(default_factory=dict)


def _to_torchhd(x: Hypervectors):
    import torchhd

    if x.vsa.name == "MAP":
        return x.dense().as_subclass(torchhd.MAPTensor)
    from hd_compute.kernels.bits import unpack_bits

    return unpack_bits(x.data, x.dim).as_subclass(torchhd.BSCTensor)


def build_cases(vsa: str, device: torch.device, *, with_torchhd: bool, seed: int = 0) -> list[Case]:
    cases = []

    bundle_input = hd.random(10_000, 10_000, vsa, seed=seed).to(device)
    case = Case(
        "bundle_10k_vectors",
        vsa,
        lambda: hd.multiset(bundle_input),
        bundle_input.nbytes + bundle_input.nbytes // 10_000,
    )
    if with_torchhd:
        import torchhd

        theirs = _to_torchhd(bundle_input)
        case.baselines["multiset"] = lambda: torchhd.multiset(theirs)
    cases.append(case)

    a = hd.random(1_000, 32_768, vsa, seed=seed + 1).to(device)
    b = hd.random(1_000, 32_768, vsa, seed=seed + 2).to(device)
    case = Case("bind_32k_dimension", vsa, lambda: hd.bind(a, b), 3 * a.nbytes)
    if with_torchhd:
        import torchhd

        a_theirs, b_theirs = _to_torchhd(a), _to_torchhd(b)
        case.baselines["bind"] = lambda: torchhd.bind(a_theirs, b_theirs)
    cases.append(case)

    queries = hd.random(1_000, 10_000, vsa, seed=seed + 3).to(device)
    items = hd.random(1_000, 10_000, vsa, seed=seed + 4).to(device)
    if vsa == "MAP":
        ours = lambda: hd.cosine_similarity(queries, items)  # noqa: E731
    else:
        ours = lambda: hd.hamming_similarity(queries, items)  # noqa: E731
    case = Case("similarity_batch_1000", vsa, ours, queries.nbytes + items.nbytes + 1_000 * 1_000 * 4)
    if with_torchhd:
        import torchhd

        q_theirs, i_theirs = _to_torchhd(queries), _to_torchhd(items)
        if vsa == "MAP":
            case.baselines["cosine_similarity"] = lambda: torchhd.cosine_similarity(q_theirs, i_theirs)
        else:
            case.baselines["dot_similarity"] = lambda: torchhd.dot_similarity(q_theirs, i_theirs)

            def chunked_hamming():
                return torch.cat(
                    [
                        torchhd.hamming_similarity(q_theirs[start : start + TORCHHD_HAMMING_QUERY_CHUNK], i_theirs)
                        for start in range(0, q_theirs.shape[0], TORCHHD_HAMMING_QUERY_CHUNK)
                    ]
                )

            case.baselines["hamming_similarity"] = chunked_hamming
            case.repeats_override["hamming_similarity"] = 1
    cases.append(case)
    return cases
