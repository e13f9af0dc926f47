"""hd_compute: fast hyperdimensional computing on torch (MAP, BSC, HRR, FHRR) for CPU and CUDA.

The public names below are imported on first use (PEP 562), so torch-free submodules such as
`hd_compute.monitoring.logging` can be imported without loading torch (the operator shares them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    **dict.fromkeys(("resolve_device",), ".device"),
    **dict.fromkeys(
        (
            "CleanupResult",
            "bind",
            "bind_sequence",
            "bundle",
            "circular",
            "cleanup",
            "cosine_similarity",
            "dot_similarity",
            "hamming_similarity",
            "hash_table",
            "identity",
            "inverse",
            "level",
            "multiset",
            "ngrams",
            "permute",
            "random",
            "sequence",
            "thermometer",
            "unbind",
        ),
        ".functional",
    ),
    **dict.fromkeys(("Hypervectors", "cat"), ".hypervectors"),
    **dict.fromkeys(("BSC", "FHRR", "HRR", "MAP", "get_model"), ".vsa"),
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)


# The names below are the package's re-exports (served by __getattr__ at run time), not unused imports.
# ruff: noqa: F401
if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
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
