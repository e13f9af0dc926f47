"""Classification accuracy on scikit-learn's bundled data sets: hd_compute against torchhd, same D and encoder.

Both pipelines: min-max scaling fitted on the training split, ID-level encoding (a random ID hypervector per
feature bound to the level hypervector of its value, bundled over features), a Centroid classifier.
Run with -s to see the accuracies.
"""

import pytest
import torch

torchhd = pytest.importorskip("torchhd")
datasets = pytest.importorskip("sklearn.datasets")
model_selection = pytest.importorskip("sklearn.model_selection")

from hd_compute.encoders import IDLevelEncoder  # noqa: E402
from hd_compute.models import Centroid  # noqa: E402

DIM = 10_000
LEVELS = 100
LOADERS = {"digits": datasets.load_digits, "iris": datasets.load_iris, "wine": datasets.load_wine}


def load_split(name):
    data = LOADERS[name]()
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        data.data, data.target, test_size=0.25, stratify=data.target, random_state=0
    )
    x_train = torch.as_tensor(x_train, dtype=torch.float32)
    x_test = torch.as_tensor(x_test, dtype=torch.float32)
    low, high = x_train.min(dim=0).values, x_train.max(dim=0).values
    span = (high - low).clamp_min(1e-12)  # constant features (digits has some) scale to 0
    x_train = (x_train - low) / span
    x_test = ((x_test - low) / span).clamp(0, 1)  # test values outside the training range take the end levels
    return x_train, x_test, torch.as_tensor(y_train), torch.as_tensor(y_test), int(data.target.max()) + 1


SEEDS = range(5)  # accuracies are averaged over seeds: one seed's random vectors move digits by ~±0.5 points


def ours_accuracy(x_train, x_test, y_train, y_test, num_classes, seed, adaptive):
    encoder = IDLevelEncoder(x_train.shape[1], DIM, "MAP", levels=LEVELS, seed=seed)
    # quantize=False (the bundle sums, not their signs) on both sides: the sum keeps how strongly each dimension
    # was voted for, which matters most with few features (iris has 4: sums of 4 are often tied). torchhd's
    # pipeline below uses the same unquantized multiset, so the encoders match.
    model = Centroid(num_classes, DIM).fit(encoder(x_train, quantize=False), y_train, adaptive=adaptive, epochs=3)
    return model.score(encoder(x_test, quantize=False), y_test)


class TorchhdEncoder(torch.nn.Module):
    """The ID-level encoder of torchhd's examples."""

    def __init__(self, num_features):
        super().__init__()
        self.ids = torchhd.embeddings.Random(num_features, DIM)
        self.values = torchhd.embeddings.Level(LEVELS, DIM, low=0.0, high=1.0)

    def forward(self, x):
        bound = torchhd.functional.bind(self.ids.weight, self.values(x))  # (batch, features, D)
        return torchhd.functional.multiset(bound)


def torchhd_accuracy(x_train, x_test, y_train, y_test, num_classes, seed):
    torch.manual_seed(seed)
    encoder = TorchhdEncoder(x_train.shape[1])
    model = torchhd.models.Centroid(DIM, num_classes)

    def encode(x):  # in batches: torchhd materializes (batch, features, D) float32
        return torch.cat([encoder(x[i : i + 128]) for i in range(0, len(x), 128)])

    with torch.no_grad():
        model.add(encode(x_train), y_train)
        model.normalize()
        predicted = model(encode(x_test), dot=False).argmax(dim=1)
    return float((predicted == y_test).float().mean())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LOADERS))
def test_accuracy_at_least_torchhd(name):
    """Our Centroid (with its adaptive OnlineHD passes) against torchhd's Centroid, same D and encoder.

    The plain (non-adaptive) Centroids are the same algorithm on different random vectors; their means are
    printed for reference.
    """
    split = load_split(name)
    ours = sum(ours_accuracy(*split, seed, adaptive=True) for seed in SEEDS) / len(SEEDS)
    ours_plain = sum(ours_accuracy(*split, seed, adaptive=False) for seed in SEEDS) / len(SEEDS)
    theirs = sum(torchhd_accuracy(*split, seed) for seed in SEEDS) / len(SEEDS)
    print(
        f"\n{name}: hd_compute {ours:.4f} (plain centroid {ours_plain:.4f}), torchhd {theirs:.4f} "
        f"(D={DIM}, {LEVELS} levels, MAP, mean of {len(SEEDS)} seeds)"
    )
    assert ours >= theirs
    if name == "digits":
        assert ours >= 0.90
        assert ours_plain >= 0.90
