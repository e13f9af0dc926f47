"""`python -m hd_compute.demo`: the engine on real data, then the seed's baseline benchmark.

1. Classifies scikit-learn's handwritten digits with an ID-level encoder and a Centroid classifier (MAP, BSC).
2. Runs hdc-bench (ours vs torchhd) with a few repetitions.
"""

from __future__ import annotations

import time

import torch
from rich.console import Console

import hd_compute as hd
from hd_compute.encoders import IDLevelEncoder
from hd_compute.models import Centroid

console = Console()


def classify_digits(vsa: str, dim: int = 10_000) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    encoder = IDLevelEncoder(x.shape[1], dim, vsa, levels=17, low=0.0, high=16.0, seed=0)
    start = time.perf_counter()
    train = encoder.encode(torch.as_tensor(x_train, dtype=torch.float32), quantize=False)
    test = encoder.encode(torch.as_tensor(x_test, dtype=torch.float32), quantize=False)
    model = Centroid(10, dim).fit(train, torch.as_tensor(y_train))
    plain = model.score(test, torch.as_tensor(y_test))
    model.fit(train, torch.as_tensor(y_train), adaptive=True, epochs=3)
    adaptive = model.score(test, torch.as_tensor(y_test))
    seconds = time.perf_counter() - start
    console.print(f"digits, {vsa} D={dim}: accuracy {plain:.3f} (centroid), {adaptive:.3f} (adaptive), {seconds:.1f} s")


def main() -> None:
    console.rule("hd_compute engine demo")
    console.print(f"device: {hd.resolve_device('auto')}")
    for vsa in ("MAP", "BSC"):
        classify_digits(vsa)
    console.rule("hdc-bench (3 repetitions; `make bench` runs the full benchmark)")
    from hd_compute.bench.cli import app

    app(["--repeats", "3"], standalone_mode=False)


if __name__ == "__main__":
    main()
