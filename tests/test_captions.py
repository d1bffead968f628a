"""Caption (text) conditioning: captions at ingest, the tokenizer, and a caption DDPM that draws the prompted class.

The training test is the acceptance check: a tiny caption-conditioned DDPM trained a few hundred steps on the
8x8 digits (captions "a photo of a {class}") makes the pipeline's feature classifier predict the prompted class
far above chance (0.1), at guidance 1 and at guidance 3.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imagegen.cli import app
from imagegen.config import load_params
from imagegen.data.captions import PAD, UNK, Tokenizer, build_vocabulary, words
from imagegen.data.processed import MANIFEST, ProcessedDataset
from imagegen.errors import ConfigError, DataError
from imagegen.stages.ingest import run_ingest

TEMPLATE = "data.caption_template=a photo of a {class}"
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def folder_params(root: Path, *overrides: str):
    return load_params(
        None, ["tracking.enabled=false", "data.name=folder", f"data.path={root}", "data.image_size=8", *overrides]
    )


def write_captions(root: Path, rows: list[tuple[str, str]]) -> Path:
    lines = ["file,caption", *(f"{name},{caption}" for name, caption in rows)]
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    return root


def all_rows(root: Path) -> list[tuple[str, str]]:
    return [(p.relative_to(root).as_posix(), f"a {p.parent.name} square") for p in sorted(root.glob("*/*.png"))]


# ==================================================================================================
# Tokenizer and vocabulary


def test_tokenizer_round_trips_captions_over_the_vocabulary_and_reads_unknown_words_as_unk() -> None:
    vocabulary = build_vocabulary(["A photo of a T-shirt/top", "a photo of a sneaker"])
    assert vocabulary[:2] == [PAD, UNK]
    assert vocabulary[2:] == sorted({"a", "photo", "of", "t", "shirt", "top", "sneaker"})
    tok = Tokenizer(vocabulary, max_length=8)
    ids = tok.encode(["a photo of a sneaker", "A PHOTO of a T-shirt/top"])
    assert ids.dtype == np.int32 and ids.shape == (2, 8)
    assert tok.decode(ids) == ["a photo of a sneaker", "a photo of a t shirt top"]
    assert (ids[0, 5:] == 0).all()  # padded with <pad> = 0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unknown = tok.encode(["a photo of a zebra"], warn_unknown=True)
    assert unknown[0, 4] == 1 and tok.decode(unknown) == [f"a photo of a {UNK}"]
    assert len(caught) == 1 and "zebra" in str(caught[0].message)
    assert Tokenizer(vocabulary, max_length=2).decode(tok.encode(["a photo of"])[:, :2]) == ["a photo"]
    assert words("Ankle boot!") == ["ankle", "boot"]


# ==================================================================================================
# Captions at ingest


def test_folder_captions_csv_is_ingested_as_token_ids_with_the_vocabulary(tmp_path: Path, helpers) -> None:
    root = helpers.write_image_folder(tmp_path / "imgs", COLOURS, per_class=7)
    write_captions(root, all_rows(root))
    out = run_ingest(folder_params(root), out_dir=tmp_path / "out")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format_version"] == 2
    assert manifest["captions"]["source"] == "captions.csv"
    assert manifest["captions"]["vocabulary"] == [PAD, UNK, "a", "blue", "green", "red", "square"]
    ds = ProcessedDataset.open(out)
    for name in ("train", "test"):
        split = ds.split(name)
        tok = Tokenizer(ds.captions["vocabulary"], ds.captions["max_length"])
        assert tok.decode(split.captions) == [f"a {ds.class_names[y]} square" for y in split.labels]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_file", "row 3: file 'red/nope.png' does not exist"),
        ("empty_caption", "row 2: empty caption for 'blue/img00.png'"),
        ("uncaptioned_image", "no row for image 'red/img06.png'"),
    ],
)
def test_a_bad_captions_csv_stops_ingest_naming_the_row_or_the_image(
    isolated_env, tmp_path: Path, helpers, case: str, expected: str
) -> None:
    root = helpers.write_image_folder(tmp_path / "imgs", COLOURS, per_class=7)
    rows = all_rows(root)
    if case == "missing_file":
        rows.insert(1, ("red/nope.png", "a red square"))
    elif case == "empty_caption":
        rows[0] = (rows[0][0], "")
    else:
        rows = rows[:-1]
    write_captions(root, rows)
    with pytest.raises(DataError) as exc:
        run_ingest(folder_params(root), out_dir=tmp_path / "out")
    message = str(exc.value)
    assert expected in message and "captions.csv" in message and "\n" not in message
    assert not (tmp_path / "out").exists()

    result = CliRunner().invoke(
        app, ["ingest", "-S", "tracking.enabled=false", "-S", "data.name=folder", "-S", f"data.path={root}"]
    )
    assert result.exit_code == 2 and expected in result.output


def test_each_prompt_is_reported_beside_the_classifiers_accuracy_on_real_images_of_its_class() -> None:
    from imagegen.evaluation.conditional import with_real_ceiling

    result = {"prompts": {"a cat": {"g1": 0.5, "g3": 0.8}, "a dog": {"g1": 0.4, "g3": 0.6}, "a cow": {"g1": 0.0}}}
    labels = np.array([0, 0, 0, 0, 1, 1])
    predicted = np.array([0, 0, 0, 1, 0, 1])  # 3 of 4 cats, 1 of 2 dogs; no real cow
    probs = np.eye(3)[predicted]
    table = with_real_ceiling(result, probs, labels)
    assert table["a cat"] == {"g1": 0.5, "g3": 0.8, "real": 0.75}
    assert table["a dog"]["real"] == 0.5
    assert np.isnan(table["a cow"]["real"])
    assert "real" not in result["prompts"]["a cat"]  # the measured shares are left as they were


def test_the_caption_summary_is_the_last_real_tokens_features_and_zero_for_the_null_caption() -> None:
    from imagegen.models.text import LastTokenPool, MaskedMeanPool

    h = np.arange(2 * 4 * 3, dtype="float32").reshape(2, 4, 3)
    mask = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], dtype="float32")  # captions are padded at the end
    last = np.asarray(LastTokenPool()([h, mask]))
    np.testing.assert_array_equal(last, [h[0, 2], np.zeros(3)])
    mean = np.asarray(MaskedMeanPool()([h, mask]))
    np.testing.assert_allclose(mean, [h[0, :3].mean(0), np.zeros(3)])


def test_a_caption_model_saved_before_the_pooling_key_is_rebuilt_with_mean_pooling() -> None:
    from imagegen.config import DDPMConfig, saved_without

    assert DDPMConfig().text_pooling == "last"  # new models: the class word
    assert saved_without(DDPMConfig, {"captions": True})["text_pooling"] == "mean"  # as an old one was trained
    assert saved_without(DDPMConfig, {"text_pooling": "last"})["text_pooling"] == "last"


def test_template_captions_for_labelled_data_and_none_by_default(isolated_env, helpers) -> None:
    plain = run_ingest(helpers.make_params("data.image_size=8"), out_dir=Path("plain"))
    assert ProcessedDataset.open(plain).captions is None  # default: format version 1, as before
    assert not (plain / "train_captions.npy").exists()

    out = run_ingest(helpers.make_params("data.image_size=8", TEMPLATE), out_dir=Path("captioned"))
    ds = ProcessedDataset.open(out)
    assert ds.manifest["format_version"] == 2
    assert ds.captions["class_captions"] == [f"a photo of a {i}" for i in range(10)]
    assert ds.content_hash != ProcessedDataset.open(plain).content_hash
    split = ds.split("test")
    tok = Tokenizer(ds.captions["vocabulary"], ds.captions["max_length"])
    assert tok.decode(split.captions[:5]) == [f"a photo of a {y}" for y in split.labels[:5]]
    with pytest.raises(Exception, match="caption_template"):
        helpers.make_params("data.caption_template=no class here")


# ==================================================================================================
# A caption-conditioned DDPM on digits


@pytest.fixture(scope="module")
def caption_model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Digits at 8x8 with template captions, the feature classifier, and a tiny caption DDPM (400 steps)."""
    from imagegen.stages.train import run_train
    from imagegen.stages.train_features import run_train_features

    root = tmp_path_factory.mktemp("captions")
    params = load_params(
        None,
        [
            "tracking.enabled=false",
            TEMPLATE,
            "data.image_size=8",
            f"data.processed_dir={root}/data",
            f"train.checkpoints_dir={root}/ckpt",
            f"train.reports_dir={root}/reports",
            f"evaluate.features_dir={root}/features",
            "evaluate.feature_epochs=6",
            "ddpm.captions=true",
            "ddpm.steps=400",
            "ddpm.base_channels=16",
            "ddpm.channel_mults=[1,2]",
            "ddpm.cross_attention_resolutions=[4]",
            "ddpm.text_width=32",
            "ddpm.text_layers=1",
            "ddpm.timesteps=200",
            "train.batch_size=64",
            "train.jit_compile=false",  # a few hundred steps: XLA's compile time is not repaid on a CPU
            "train.sample_every=100000",
            "train.checkpoint_every=100000",
            "train.grid_size=4",
            "sample.steps=10",
        ],
    )
    data = run_ingest(params)
    run_train_features(params, data_dir=data)
    model = run_train(params, "ddpm", data_dir=data, out_dir=root / "ddpm_caption", show_progress=False)
    return {"params": params, "data": data, "model": model, "root": root}


@pytest.mark.timeout(1800)  # generous: the module fixture trains a model, slow on a busy machine
def test_a_caption_ddpm_draws_the_prompted_digit_well_above_chance(caption_model: dict) -> None:
    from imagegen.evaluation.conditional import prompt_accuracy
    from imagegen.evaluation.features import load_extractor

    params = caption_model["params"]
    dataset = ProcessedDataset.open(caption_model["data"])
    extractor = load_extractor(params.evaluate.features_dir)
    scores = prompt_accuracy(caption_model["model"], dataset, extractor, params.sample, params.seed, n=100)
    print("prompted-class accuracy (chance 0.1):", scores)
    assert scores["prompt_n"] == 100
    assert scores["prompt_accuracy_g3"] > 0.3
    assert scores["prompt_accuracy_g1"] > 0.2
    # Every prompt is reported; the mean is over prompts (equal images each) and the worst one is named.
    table = scores["prompts"]
    assert list(table) == dataset.captions["class_captions"]
    for scale in ("g1", "g3"):
        shares = [row[scale] for row in table.values()]
        assert scores[f"prompt_accuracy_{scale}"] == pytest.approx(np.mean(shares))
        assert scores[f"prompt_accuracy_min_{scale}"] == min(shares)


@pytest.mark.timeout(1800)  # generous: the module fixture trains a model, slow on a busy machine
def test_imagegen_sample_prompt_writes_images_and_export_refuses_caption_models(caption_model: dict) -> None:
    model, root = caption_model["model"], caption_model["root"]
    out = root / "sampled"
    args = ["sample", "--model", str(model), "--out", str(out), "--n", "4", "--prompt", "a photo of a 7"]
    result = CliRunner().invoke(app, [*args, "--guidance", "3", "-S", "tracking.enabled=false", "-S", "sample.steps=4"])
    assert result.exit_code == 0, result.output
    with np.load(out / "samples.npz") as npz:
        assert npz["images"].shape == (4, 8, 8, 1) and npz["images"].dtype == np.uint8
    assert (out / "grid.png").is_file()

    from imagegen.artifact import load_model
    from imagegen.export.graph import build_serving

    with pytest.raises(ConfigError, match="caption-conditioned models cannot be exported"):
        build_serving(load_model(model), ddpm_steps=2, clip_x0=True, guidance_scale=1.0)
