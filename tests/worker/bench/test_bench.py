"""hdc-bench compares like with like: torchhd runs on the same hypervectors and computes the same results."""

import json

import pytest
import torch
from typer.testing import CliRunner

import hd_compute as hd
from hd_compute.bench.cases import build_cases
from hd_compute.bench.cli import app, markdown_report

torchhd = pytest.importorskip("torchhd")


@pytest.mark.slow
@pytest.mark.parametrize("vsa", ["MAP", "BSC"])
def test_torchhd_baselines_compute_the_same_results(vsa):
    cases = {c.name: c for c in build_cases(vsa, torch.device("cpu"), with_torchhd=True)}

    bound = cases["bind_32k_dimension"]
    ours, theirs = bound.ours(), bound.baselines["bind"]()
    expected = ours.dense() if vsa == "MAP" else ours.dense() < 0  # torchhd BSC is bool, True = bit 1
    assert torch.equal(theirs.as_subclass(torch.Tensor).to(expected.dtype), expected)

    similarity = cases["similarity_batch_1000"]
    ours = similarity.ours()
    if vsa == "MAP":
        theirs = similarity.baselines["cosine_similarity"]().as_subclass(torch.Tensor)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    else:  # ours: equal dimensions h; torchhd's dot of the bipolar view is 2h - D
        theirs = similarity.baselines["dot_similarity"]().as_subclass(torch.Tensor)
        assert torch.equal((2 * ours - 10_000).float(), theirs)

    bundled = cases["bundle_10k_vectors"]
    ours = bundled.ours().dense()
    theirs = bundled.baselines["multiset"]().as_subclass(torch.Tensor)
    if vsa == "MAP":  # torchhd returns the sums: their signs are the majority wherever there is no tie
        decided = theirs != 0
        assert torch.equal(ours[decided], theirs.sign()[decided])
    else:  # torchhd breaks ties at random; compare the decided bits only
        assert (ours < 0).eq(theirs.bool()).float().mean() > 0.99


def test_cli_writes_json_and_markdown(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "--repeats",
            "1",
            "--no-torchhd",
            "--vsa",
            "BSC",
            "--json",
            str(tmp_path / "r.json"),
            "--markdown",
            str(tmp_path / "r.md"),
        ],
    )
    assert result.exit_code in (0, 1), result.output  # 1 = a target missed on a busy machine, still a report
    report = json.loads((tmp_path / "r.json").read_text())
    assert [c["case"] for c in report["cases"]] == ["bundle_10k_vectors", "bind_32k_dimension", "similarity_batch_1000"]
    for row in report["cases"]:
        assert row["ours_s"] > 0 and 0 < row["roofline_fraction"]
        assert row["ours_peak_mb"] is None or row["ours_peak_mb"] >= 0
    assert report["machine"]["torch"] == torch.__version__
    assert (tmp_path / "r.md").read_text() == markdown_report(report)


def test_cli_rejects_models_without_seed_cases():
    result = CliRunner().invoke(app, ["--vsa", "HRR", "--no-torchhd"])
    assert result.exit_code == 2
    assert "MAP and BSC" in result.output
    assert hd.MAP  # the package imports cleanly alongside the CLI
