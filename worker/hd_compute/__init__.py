"""hd_compute: fast hyperdimensional computing on torch (MAP, BSC, HRR, FHRR) for CPU and CUDA."""

from .device import resolve_device
from .functional import (
    CleanupResult,
    bind,
    bind_sequence,
    bundle,
    circular,
    cleanup,
    cosine_similarity,
    dot_similarity,
    hamming_similarity,
    hash_table,
    identity,
    inverse,
    level,
    multiset,
    ngrams,
    permute,
    random,
    sequence,
    thermometer,
    unbind,
)
from .hypervectors import Hypervectors, cat
from .vsa import BSC, FHRR, HRR, MAP, get_model

__version__ = "0.1.0"

__all__ = [
    "BSC", "FHRR", "HRR", "MAP", "CleanupResult", "Hypervectors", "bind", "bind_sequence", "bundle", "cat",
    "circular", "cleanup", "cosine_similarity", "dot_similarity", "get_model", "hamming_similarity",
    "hash_table", "identity", "inverse", "level", "multiset", "ngrams", "permute", "random", "resolve_device",
    "sequence", "thermometer", "unbind",
]
