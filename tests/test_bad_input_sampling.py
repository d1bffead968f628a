"""Sampling and evaluation input/output: bounded memory, refusals before any work, self-healing caches.

Each case runs the real ``imagegen`` command. A refusal exits with status 2 and one line on stderr naming the
file or parameter and what was expected, leaving the previous output exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

from imagegen import sampling
from imagegen.cli import app
from imagegen.config import load_params
from imagegen.data.processed import ProcessedDataset
from imagegen.stages.sample import write_npz_stream
from tests.bad_input_support import TINY

OFF = ["-S", "tracking.enabled=false"]
QUICK_EVAL = [
    "evaluate.max_real=120",
    "evaluate.kid_subsets=2",
    "evaluate.kid_subset_size=20",
    "evaluate.feature_epochs=1",
    "evaluate.feature_width=4",
    "evaluate.feature_dim=8",
]


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory, digits: Path) -> Path:
    """A feature extractor trained for one epoch: evaluation only needs it to load and embed."""
    from imagegen.stages.train_features import run_train_features

    root = tmp_path_factory.mktemp("features")
    params = load_params(None, [*TINY, *QUICK_EVAL, f"train.reports_dir={root / 'reports'}"])
    return run_train_features(params, data_dir=digits, out_dir=root / "features")


def imagegen(*args: str) -> Result:
    """``imagegen ARGS -S tracking.enabled=false`` in-process."""
    return CliRunner().invoke(app, [*args, *OFF])


def one_line_error(result: Result) -> str:
    """The message of a refusal: exit status 2, one ``error:`` line on stderr, no traceback."""
    message = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: ") and "Traceback" not in result.output, message
    return message


def sha256_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (or of ``root`` itself when it is a file)."""
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    return {str(f.relative_to(root.parent)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def previous_samples(folder: Path) -> Path:
    """A folder standing for an earlier `imagegen sample` run."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "samples.npz", images=np.full((3, 8, 8, 1), 7, dtype=np.uint8))
    (folder / "grid.png").write_bytes(b"an earlier grid")
    return folder


@pytest.fixture
def no_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model is loaded for sampling: refusals must come before any sampling work."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded for sampling before the request was checked")

    monkeypatch.setattr(sampling, "load_sampler", refuse)


@pytest.fixture
def sampler_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images asked of the sampler per call, in order."""
    calls: list[int] = []
    make = sampling.make_sampler

    def recording(*args: Any, **kwargs: Any) -> sampling.SampleFn:
        sample = make(*args, **kwargs)

        def counted(n: int, rng: np.random.Generator, labels: np.ndarray | None = None) -> np.ndarray:
            calls.append(n)
            return sample(n, rng, labels)

        return counted

    monkeypatch.setattr(sampling, "make_sampler", recording)
    return calls


# --------------------------------------------------------------------------------------------------
# imagegen sample


def test_sample_memory_does_not_grow_with_n_chunks_give_identical_images(
    isolated_env, model: Path, monkeypatch: pytest.MonkeyPatch, sampler_calls: list[int]
) -> None:
    monkeypatch.setattr(sampling, "BATCH_SIZE", 3)
    chunked = imagegen("sample", "--model", str(model), "--out", "chunked", "--n", "10", "--seed", "5")
    assert chunked.exit_code == 0, (chunked.output, chunked.exception)
    assert sampler_calls == [3, 3, 3, 1]  # never more than one chunk asked of the sampler at a time
    assert "sample vae: 10/10 images" in chunked.stderr  # progress on stderr when not on a terminal

    monkeypatch.setattr(sampling, "BATCH_SIZE", 256)
    whole = imagegen("sample", "--model", str(model), "--out", "whole", "--n", "10", "--seed", "5")
    assert whole.exit_code == 0, (whole.output, whole.exception)
    assert sampler_calls[4:] == [10]

    with np.load("chunked/samples.npz", allow_pickle=False) as a, np.load("whole/samples.npz") as b:
        assert a.files == ["images"] and a["images"].shape == (10, 8, 8, 1) and a["images"].dtype == np.uint8
        np.testing.assert_array_equal(a["images"], b["images"])
    in_memory, _ = sampling.generate_images(model, 10, 5, batch_size=3, show_progress=False)
    with np.load("chunked/samples.npz") as a:
        np.testing.assert_array_equal(a["images"], in_memory)
    assert Path("chunked/grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in Path("chunked").iterdir()) == [".imagegen-output", "grid.png", "samples.npz"]


def peak_bytes_writing(path: Path, batch: tuple[int, ...], count: int) -> int:
    """Peak traced allocation while :func:`write_npz_stream` writes ``count`` fresh batches of ``batch``."""

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(count):
            yield np.full(batch, i % 256, dtype=np.uint8), np.full(batch[0], i, dtype=np.int32)

    tracemalloc.start()
    try:
        write_npz_stream(path, count * batch[0], batches())
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_npz_writer_holds_a_few_batches_in_memory_however_many_images_it_writes(tmp_path: Path) -> None:
    batch = (256, 32, 32, 3)
    batch_bytes = int(np.prod(batch))

    few = peak_bytes_writing(tmp_path / "few.npz", batch, 5)
    many = peak_bytes_writing(tmp_path / "many.npz", batch, 60)

    assert many < few + batch_bytes // 4, (few, many)  # 12x the images, not more memory
    assert many < 4 * batch_bytes, (many, 60 * batch_bytes)
    with np.load(tmp_path / "many.npz", allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    assert images.shape == (60 * 256, 32, 32, 3) and labels.shape == (60 * 256,)
    assert images[::256, 0, 0, 0].tolist() == list(range(60)) == labels[::256].tolist()


def test_sample_n_above_sample_max_images_is_refused_up_front_naming_n_and_the_cap(
    isolated_env, model: Path, no_sampling: None
) -> None:
    out = previous_samples(isolated_env.root / "samples")
    before = sha256_tree(out)

    huge = one_line_error(imagegen("sample", "--model", str(model), "--out", str(out), "--n", "1000000000"))
    assert "--n 1000000000" in huge and "sample.max_images=1000000" in huge, huge

    capped = imagegen("sample", "--model", str(model), "--out", str(out), "--n", "6", "-S", "sample.max_images=5")
    message = one_line_error(capped)
    assert "--n 6" in message and "sample.max_images=5" in message and "at most 5" in message, message
    assert sha256_tree(out) == before


def test_sample_out_that_is_a_file_is_refused_before_any_sampling(isolated_env, model: Path, no_sampling: None) -> None:
    file = isolated_env.root / "notes.txt"
    file.write_text("not a folder\n")

    message = one_line_error(imagegen("sample", "--model", str(model), "--out", str(file), "--n", "4"))
    assert f"{file}: is a file; expected a folder" in message, message

    below = one_line_error(imagegen("sample", "--model", str(model), "--out", str(file / "samples"), "--n", "4"))
    assert f"{file}: is a file; expected a folder" in below and str(file / "samples") in below, below
    assert file.read_text() == "not a folder\n"


def test_a_sample_run_that_fails_midway_leaves_the_previous_samples_untouched(
    isolated_env, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = previous_samples(isolated_env.root / "samples")
    before = sha256_tree(out)
    make = sampling.make_sampler

    def failing_on_the_second_batch(*args: Any, **kwargs: Any) -> sampling.SampleFn:
        sample, calls = make(*args, **kwargs), []

        def once(n: int, rng: np.random.Generator, labels: np.ndarray | None = None) -> np.ndarray:
            calls.append(n)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return sample(n, rng, labels)

        return once

    monkeypatch.setattr(sampling, "make_sampler", failing_on_the_second_batch)
    monkeypatch.setattr(sampling, "BATCH_SIZE", 2)
    result = imagegen("sample", "--model", str(model), "--out", str(out), "--n", "6")

    assert result.exit_code != 0
    assert sha256_tree(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "samples.npz"]  # the temporary is gone


# --------------------------------------------------------------------------------------------------
# imagegen evaluate --samples


def evaluate(samples: Path, out: Path, digits: Path, *extra: str) -> Result:
    return imagegen("evaluate", "--samples", str(samples), "--out", str(out), "--data", str(digits), *extra)


def test_evaluate_samples_given_a_plain_npy_names_it_and_asks_for_an_npz(isolated_env, digits: Path) -> None:
    npy = isolated_env.root / "images.npy"
    np.save(npy, np.zeros((8, 8, 8, 1), dtype=np.uint8))

    message = one_line_error(evaluate(npy, isolated_env.root / "report", digits))
    assert f"{npy}: a plain .npy array, not an .npz archive" in message, message
    assert "expected an .npz with uint8 'images' (N,H,W,C), e.g. from `imagegen sample`" in message, message


def test_evaluate_samples_of_random_bytes_is_not_an_npz_archive_and_says_nothing_of_pickles(
    isolated_env, digits: Path
) -> None:
    noise = isolated_env.root / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))

    message = one_line_error(evaluate(noise, isolated_env.root / "report", digits))
    assert f"{noise}: not an .npz archive" in message, message
    assert "pickle" not in message.lower(), message


def test_evaluate_samples_of_a_truncated_npz_names_it_as_damaged(isolated_env, digits: Path) -> None:
    npz = isolated_env.root / "cut.npz"
    np.savez_compressed(npz, images=np.random.default_rng(0).integers(0, 256, (50, 8, 8, 1), dtype=np.uint8))
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])

    message = one_line_error(evaluate(npz, isolated_env.root / "report", digits))
    assert f"{npz}: a damaged or truncated .npz archive" in message, message


@pytest.mark.parametrize("damage", ["model-json-not-json", "truncated-weights"])
def test_a_damaged_feature_extractor_is_named_in_one_line(
    damage: str, isolated_env, digits: Path, features: Path
) -> None:
    broken = shutil.copytree(features, isolated_env.root / "features")
    if damage == "model-json-not-json":
        named = broken / "model.json"
        named.write_text('{"image_shape": [8, 8, 1], ')
    else:
        named = broken / "classifier.weights.h5"
        named.write_bytes(named.read_bytes()[: named.stat().st_size // 2])
    samples = isolated_env.root / "samples.npz"
    np.savez(samples, images=np.zeros((8, 8, 8, 1), dtype=np.uint8))

    message = one_line_error(evaluate(samples, isolated_env.root / "report", digits, "--features", str(broken)))
    assert str(named) in message and "imagegen train-features" in message, message


def test_a_truncated_real_feature_cache_is_recomputed_with_a_warning_and_rewritten(
    isolated_env, digits: Path, features: Path
) -> None:
    samples = isolated_env.root / "samples.npz"
    np.savez(samples, images=np.asarray(ProcessedDataset.open(digits).split("train").images[:24]))
    args = ("--features", str(features), *[arg for setting in QUICK_EVAL for arg in ("-S", setting)])

    first = evaluate(samples, isolated_env.root / "first", digits, *args)
    assert first.exit_code == 0, (first.output, first.exception)
    (cache,) = (isolated_env.cache / "eval-features").iterdir()
    complete = cache.read_bytes()
    cache.write_bytes(complete[: len(complete) // 3])

    healed = evaluate(samples, isolated_env.root / "healed", digits, *args)
    assert healed.exit_code == 0, (healed.output, healed.exception)
    assert "warning:" in healed.stderr and str(cache) in healed.stderr and "recomputing" in healed.stderr
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # rewritten in place, no temporaries
    (isolated_env.root / "complete.npz").write_bytes(complete)
    with np.load(cache, allow_pickle=False) as rewritten, np.load(isolated_env.root / "complete.npz") as original:
        for name in ("features", "probs", "labels"):
            np.testing.assert_array_equal(rewritten[name], original[name])
    metrics = [json.loads((isolated_env.root / run / "metrics.json").read_text()) for run in ("first", "healed")]
    assert metrics[0] == metrics[1]

    later = evaluate(samples, isolated_env.root / "later", digits, *args)
    assert later.exit_code == 0 and "warning:" not in later.stderr, later.output
