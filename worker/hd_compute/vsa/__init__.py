"""The four VSA models; `get_model` maps a name (case-insensitive) to its singleton."""

from __future__ import annotations

from .base import VSAModel
from .bsc import BSC
from .fhrr import FHRR
from .hrr import HRR
from .map import MAP

MODELS: dict[str, VSAModel] = {m.name: m for m in (MAP(), BSC(), HRR(), FHRR())}


def get_model(vsa: str | VSAModel, name: str = "vsa") -> VSAModel:
    if isinstance(vsa, VSAModel):
        return vsa
    if not isinstance(vsa, str):
        raise TypeError(f"{name} must be one of {', '.join(MODELS)} (a str), got {type(vsa).__name__}")
    model = MODELS.get(vsa.upper())
    if model is None:
        raise ValueError(f"{name} must be one of {', '.join(MODELS)}, got {vsa!r}")
    return model


__all__ = ["BSC", "FHRR", "HRR", "MAP", "MODELS", "VSAModel", "get_model"]
