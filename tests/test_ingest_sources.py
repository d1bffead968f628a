"""Ingestion: every source, the raw-file resolution/verification rules, and atomic output.

Raw files are tiny ones the tests write (idx .gz, a CIFAR-10-format tarball, PNG/JPEG folders), plus the real
Fashion-MNIST files from the shared datasets folder when present. Downloads go to a local HTTP server only.
"""

from __future__ import annotations

import functools
import gzip
import json
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from imagegen.data.processed import MANIFEST, ProcessedDataset, content_hash
from imagegen.data.raw import RawFile, resolve, safe_extract
from imagegen.data.sources.cifar10 import load_cifar10
from imagegen.data.sources.folder import load_folder
from imagegen.data.sources.idx import FILES, load_idx_dataset, read_idx
from imagegen.errors import ChecksumError, DataError, DataNotFoundError
from imagegen.stages.ingest import run_ingest

PROCESSED_FILES = sorted([MANIFEST, "train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy"])
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"


def tmp_leftovers(folder: Path) -> list[str]:
    """Entries an interrupted atomic write would leave behind (``*.tmp`` and ``.old-*`` siblings)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".old-" in p.name)


# ==================================================================================================
# digits (embedded, offline)


def test_digits_ingest_writes_format_v1_and_is_reproducible(isolated_env, helpers):
    out = run_ingest(helpers.make_params())
    assert out == Path("data/processed/digits")
    assert (isolated_env.root / out).is_dir()
    assert sorted(p.name for p in out.iterdir() if p.name != ".imagegen-output") == PROCESSED_FILES

    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format_version"] == 1
    assert manifest["dataset"] == "digits"
    assert manifest["class_names"] == [str(i) for i in range(10)]
    assert manifest["image_shape"] == [16, 16, 1]
    assert sum(manifest["counts"].values()) == 1797
    assert manifest["ingest"] == {"image_size": 16, "channels": 1, "seed": 0, "test_fraction": 0.15}

    ds = ProcessedDataset.open(out)
    splits = {name: ds.split(name, mmap=False) for name in ("train", "test")}
    for name, split in splits.items():
        assert split.images.dtype == np.uint8
        assert split.images.shape == (manifest["counts"][name], 16, 16, 1)
        assert split.labels.dtype == np.int64
        assert set(np.unique(split.labels)) == set(range(10))  # stratified: every class in both splits
    assert content_hash(splits, ds.class_names) == manifest["content_hash"]
    assert tmp_leftovers(out.parent) == []

    again = run_ingest(helpers.make_params(), out_dir=Path("again"))
    assert json.loads((again / MANIFEST).read_text())["content_hash"] == manifest["content_hash"]

    other = run_ingest(helpers.make_params("seed=1"), out_dir=Path("seed1"))
    other_manifest = json.loads((other / MANIFEST).read_text())
    assert other_manifest["content_hash"] != manifest["content_hash"]
    assert other_manifest["counts"] == manifest["counts"]
    assert not np.array_equal(np.load(other / "test_images.npy"), np.load(out / "test_images.npy"))


# ==================================================================================================
# fashion_mnist: the real published files


def test_fashion_mnist_from_shared_files_matches_published_md5s(isolated_env, shared_datasets, monkeypatch, helpers):
    monkeypatch.setenv("IMAGEGEN_DATA_DIR", str(shared_datasets))
    params = helpers.make_params("data.name=fashion_mnist", "data.image_size=28", "data.download=false")
    out = run_ingest(params)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["counts"] == {"train": 60000, "test": 10000}
    assert manifest["image_shape"] == [28, 28, 1]
    assert manifest["class_names"][0] == "T-shirt/top" and manifest["class_names"][9] == "Ankle boot"
    assert manifest["class_counts"]["train"] == [6000] * 10
    assert manifest["class_counts"]["test"] == [1000] * 10
    assert {f["name"]: f["md5"] for f in manifest["files"]} == {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    assert not isolated_env.cache.exists()  # found in $IMAGEGEN_DATA_DIR, nothing cached or downloaded


# ==================================================================================================
# mnist-style idx files written by the test


def test_idx_files_round_trip_exactly(isolated_env, helpers):
    idx = helpers.write_idx_set(isolated_env.root / "raw")
    cfg = helpers.make_params("data.name=mnist", "data.download=false", path=idx.folder).data
    ds = load_idx_dataset(cfg, seed=0, files=idx.raw_files())
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = idx.arrays[f"{prefix}-images-idx3-ubyte.gz"]
        labels = idx.arrays[f"{prefix}-labels-idx1-ubyte.gz"]
        np.testing.assert_array_equal(ds.splits[split].images, images[..., None])
        np.testing.assert_array_equal(ds.splits[split].labels, labels.astype(np.int64))
        assert ds.splits[split].labels.dtype == np.int64
    assert ds.class_names == [str(i) for i in range(10)]
    assert {f["name"]: f["md5"] for f in ds.files} == {r.filename: r.md5 for r in idx.raw_files()}


def test_mnist_ingest_end_to_end_resizes_idx_files(isolated_env, helpers, monkeypatch):
    idx = helpers.write_idx_set(isolated_env.root / "raw")
    monkeypatch.setitem(FILES, "mnist", idx.raw_files())
    params = helpers.make_params("data.name=mnist", "data.image_size=8", "data.channels=3", path=idx.folder)
    out = run_ingest(params)
    manifest = json.loads((out / MANIFEST).read_text())
    assert out == Path("data/processed/mnist")
    assert manifest["counts"] == {"train": 12, "test": 5}
    assert manifest["image_shape"] == [8, 8, 3]
    assert "test_fraction" not in manifest["ingest"]  # official split
    images = np.load(out / "train_images.npy")
    assert images.shape == (12, 8, 8, 3)
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # gray replicated into RGB


def test_raw_files_are_found_in_data_dir_env_folder(isolated_env, helpers, monkeypatch):
    data_dir = isolated_env.root / "datasets"
    idx = helpers.write_idx_set(data_dir / "mnist")
    monkeypatch.setenv("IMAGEGEN_DATA_DIR", str(data_dir))
    found = resolve("mnist", idx.raw_files(), explicit=None, download=False)
    assert found == {name: data_dir / "mnist" / name for name in idx.arrays}


def test_data_path_is_looked_at_before_data_dir_env(isolated_env, helpers, monkeypatch):
    env_dir = isolated_env.root / "datasets"
    idx = helpers.write_idx_set(env_dir / "mnist")
    explicit = isolated_env.root / "explicit"
    explicit.mkdir()
    (explicit / TRAIN_IMAGES).write_bytes(b"stale copy")
    monkeypatch.setenv("IMAGEGEN_DATA_DIR", str(env_dir))
    with pytest.raises(ChecksumError) as err:
        resolve("mnist", idx.raw_files(), explicit=explicit, download=False)
    assert str(explicit / TRAIN_IMAGES) in str(err.value)


# --------------------------------------------------------------------------------------------------
# verification errors


def test_md5_mismatch_names_the_file_and_both_md5s(isolated_env, helpers):
    folder = isolated_env.root / "raw"
    folder.mkdir()
    bad = folder / TRAIN_IMAGES
    bad.write_bytes(b"not the official file")
    cfg = helpers.make_params("data.name=mnist", "data.download=false", path=folder).data
    with pytest.raises(ChecksumError) as err:
        load_idx_dataset(cfg, seed=0)
    msg = str(err.value)
    assert str(bad) in msg
    assert helpers.md5_bytes(b"not the official file") in msg
    official = next(f for f in FILES["mnist"] if f.filename == TRAIN_IMAGES)
    assert official.md5 in msg


@pytest.mark.parametrize(
    "make_bytes",
    [
        pytest.param(lambda: b"\x1f\x8b\x08\x00" + bytes(range(200)), id="garbage-after-gzip-magic"),
        pytest.param(lambda: gzip.compress(bytes(5000), mtime=0)[:30], id="truncated-gzip"),
        pytest.param(lambda: b"plain bytes, no gzip at all", id="not-gzip"),
    ],
)
def test_corrupted_gz_with_matching_md5_names_the_file(isolated_env, helpers, make_bytes):
    idx = helpers.write_idx_set(isolated_env.root / "raw")
    broken = idx.folder / TRAIN_IMAGES
    broken.write_bytes(make_bytes())
    files = idx.raw_files()  # md5s taken after corruption: verification passes, decoding must not
    cfg = helpers.make_params("data.name=mnist", "data.download=false", path=idx.folder).data
    with pytest.raises(DataError) as err:
        load_idx_dataset(cfg, seed=0, files=files)
    assert not isinstance(err.value, ChecksumError)
    assert str(broken) in str(err.value)
    assert "gzip" in str(err.value)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(
            b"\x00\x00\x08\x03" + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") + (4).to_bytes(4, "big") + bytes(40),
            "header promises (3, 4, 4) = 48 bytes, file has 40",
            id="data-shorter-than-header-says",
        ),
        pytest.param(
            b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes(4),
            "header promises (3,) = 3 bytes, file has 4",
            id="data-longer-than-header-says",
        ),
        pytest.param(
            b"\x00\x00\x08\x03" + (3).to_bytes(4, "big"),
            "header promises 3 dimensions",
            id="header-itself-truncated",
        ),
        pytest.param(
            b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + bytes(4),
            "not an idx file of unsigned bytes",
            id="float-type",
        ),
        pytest.param(b"\x00\x00", "too short", id="two-bytes"),
    ],
)
def test_idx_header_length_mismatch_names_the_file(tmp_path, payload, expected):
    path = tmp_path / "bad-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(payload, mtime=0))
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_label_count_mismatch_names_the_labels_file(isolated_env, helpers):
    arrays = helpers.tiny_idx_arrays()
    arrays["train-labels-idx1-ubyte.gz"] = arrays["train-labels-idx1-ubyte.gz"][:-1]
    idx = helpers.write_idx_set(isolated_env.root / "raw", arrays)
    cfg = helpers.make_params("data.name=mnist", "data.download=false", path=idx.folder).data
    with pytest.raises(DataError) as err:
        load_idx_dataset(cfg, seed=0, files=idx.raw_files())
    assert str(idx.folder / "train-labels-idx1-ubyte.gz") in str(err.value)
    assert "11 labels for 12 images" in str(err.value)


# --------------------------------------------------------------------------------------------------
# not found / download


def test_not_found_offline_lists_folders_and_how_to_provide_them(isolated_env, helpers, monkeypatch):
    explicit = isolated_env.root / "explicit"
    explicit.mkdir()
    env_dir = isolated_env.root / "datasets"
    env_dir.mkdir()
    monkeypatch.setenv("IMAGEGEN_DATA_DIR", str(env_dir))
    cfg = helpers.make_params("data.name=mnist", "data.download=false", path=explicit).data
    with pytest.raises(DataNotFoundError) as err:
        load_idx_dataset(cfg, seed=0)
    msg = str(err.value)
    assert TRAIN_IMAGES in msg
    for folder in (explicit, env_dir / "mnist", isolated_env.cache / "mnist"):
        assert str(folder / TRAIN_IMAGES) in msg
    assert "IMAGEGEN_DATA_DIR" in msg
    assert "data.path" in msg
    assert "data.download=true" in msg
    assert not isolated_env.cache.exists()


def test_download_failure_names_the_url(isolated_env, helpers):
    cfg = helpers.make_params("data.name=mnist", "data.download=true", mirror="http://127.0.0.1:9").data
    with pytest.raises(DataNotFoundError) as err:
        load_idx_dataset(cfg, seed=0)
    msg = str(err.value)
    assert f"http://127.0.0.1:9/{TRAIN_IMAGES}" in msg
    assert str(isolated_env.cache / "mnist" / TRAIN_IMAGES) in msg  # where it looked
    assert tmp_leftovers(isolated_env.cache / "mnist") == []
    assert not (isolated_env.cache / "mnist" / TRAIN_IMAGES).exists()


def test_mirror_without_scheme_is_a_data_error_naming_the_url(isolated_env, helpers):
    cfg = helpers.make_params("data.name=mnist", "data.download=true", mirror="127.0.0.1:9").data
    with pytest.raises(DataNotFoundError) as err:
        load_idx_dataset(cfg, seed=0)
    assert f"127.0.0.1:9/{TRAIN_IMAGES}" in str(err.value)


class _QuietHandler(SimpleHTTPRequestHandler):
    requested: list[str]

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass

    def do_GET(self):
        self.requested.append(self.path)
        super().do_GET()


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/served``; yields (folder, base URL, request log)."""
    served = tmp_path / "served"
    served.mkdir()
    requested: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requested": requested})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_from_mirror_lands_verified_in_the_cache(isolated_env, helpers, http_folder):
    served, base_url, requested = http_folder
    idx = helpers.write_idx_set(served)
    files = idx.raw_files(base_url="https://official.invalid/mnist/")  # the mirror must replace this
    cfg = helpers.make_params("data.name=mnist", "data.download=true", mirror=base_url).data
    ds = load_idx_dataset(cfg, seed=0, files=files)

    cached = isolated_env.cache / "mnist"
    for name in idx.arrays:
        assert (cached / name).read_bytes() == (served / name).read_bytes()
    assert sorted(requested) == sorted(f"/{name}" for name in idx.arrays)
    assert tmp_leftovers(cached) == []
    np.testing.assert_array_equal(ds.splits["train"].images[..., 0], idx.arrays[TRAIN_IMAGES])

    # A second load reads the cache and asks the server for nothing.
    requested.clear()
    again = load_idx_dataset(cfg, seed=0, files=files)
    assert requested == []
    np.testing.assert_array_equal(again.splits["test"].labels, ds.splits["test"].labels)


def test_downloaded_file_with_wrong_bytes_is_refused_and_not_cached(isolated_env, helpers, http_folder):
    served, base_url, _ = http_folder
    idx = helpers.write_idx_set(served)
    files = idx.raw_files()
    wrong = b"<html>captive portal</html>"
    (served / TRAIN_IMAGES).write_bytes(wrong)
    cfg = helpers.make_params("data.name=mnist", "data.download=true", mirror=base_url).data
    with pytest.raises(ChecksumError) as err:
        load_idx_dataset(cfg, seed=0, files=files)
    msg = str(err.value)
    assert base_url + TRAIN_IMAGES in msg
    assert helpers.md5_bytes(wrong) in msg
    assert next(f.md5 for f in files if f.filename == TRAIN_IMAGES) in msg
    cached = isolated_env.cache / "mnist"
    assert not (cached / TRAIN_IMAGES).exists()  # a bad download never poisons the cache
    assert tmp_leftovers(cached) == []


# ==================================================================================================
# cifar10


def test_cifar10_tarball_gives_channel_last_images(isolated_env, helpers):
    folder = isolated_env.root / "raw"
    tar = folder / "cifar-10-python.tar.gz"
    first = helpers.cifar_batch(3, seed=42)
    data = first[b"data"]
    row, col = 5, 7
    data[1, 0 * 1024 + row * 32 + col] = 11  # R plane
    data[1, 1 * 1024 + row * 32 + col] = 201  # G plane
    data[1, 2 * 1024 + row * 32 + col] = 99  # B plane
    written = helpers.write_cifar_tarball(tar, per_batch=2, batches={"data_batch_1": first})
    tarball = RawFile(tar.name, helpers.md5_of(tar), "https://official.invalid/cifar-10-python.tar.gz")
    cfg = helpers.make_params("data.name=cifar10", "data.download=false", path=folder).data

    ds = load_cifar10(cfg, seed=0, tarball=tarball)
    train, test = ds.splits["train"], ds.splits["test"]
    assert train.images.shape == (3 + 4 * 2, 32, 32, 3)
    assert test.images.shape == (2, 32, 32, 3)
    assert train.images.dtype == np.uint8
    assert train.images[1, row, col].tolist() == [11, 201, 99]
    np.testing.assert_array_equal(train.images[0], data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    expected_labels = np.concatenate([written[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    np.testing.assert_array_equal(train.labels, expected_labels)
    np.testing.assert_array_equal(test.labels, written["test_batch"][b"labels"])
    assert ds.class_names == helpers.CIFAR_CLASSES
    assert ds.files == [{"name": tar.name, "md5": tarball.md5}]


def test_cifar10_tarball_that_is_not_a_tar_names_the_file(isolated_env, helpers):
    folder = isolated_env.root / "raw"
    folder.mkdir()
    tar = folder / "cifar-10-python.tar.gz"
    tar.write_bytes(gzip.compress(b"this is not a tar archive" * 40, mtime=0))
    tarball = RawFile(tar.name, helpers.md5_of(tar), "https://official.invalid/cifar-10-python.tar.gz")
    cfg = helpers.make_params("data.name=cifar10", "data.download=false", path=folder).data
    with pytest.raises(DataError) as err:
        load_cifar10(cfg, seed=0, tarball=tarball)
    assert str(tar) in str(err.value)


def test_cifar10_tarball_missing_a_batch_names_it(isolated_env, helpers):
    folder = isolated_env.root / "raw"
    folder.mkdir()
    tar = folder / "cifar-10-python.tar.gz"
    with tarfile.open(tar, "w:gz") as archive:
        helpers.add_tar_dir(archive, "cifar-10-batches-py")
        import pickle

        meta = {b"label_names": [c.encode() for c in helpers.CIFAR_CLASSES]}
        helpers.add_tar_file(archive, "cifar-10-batches-py/batches.meta", pickle.dumps(meta))
    tarball = RawFile(tar.name, helpers.md5_of(tar), "https://official.invalid/cifar-10-python.tar.gz")
    cfg = helpers.make_params("data.name=cifar10", "data.download=false", path=folder).data
    with pytest.raises(DataError) as err:
        load_cifar10(cfg, seed=0, tarball=tarball)
    assert "data_batch_1" in str(err.value)


# --------------------------------------------------------------------------------------------------
# safe_extract


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_unsafe_tar_member_is_refused_and_nothing_is_written(tmp_path, helpers, kind):
    archive_path = tmp_path / "archive.tar"
    dest = tmp_path / "extract" / "here"
    outside = tmp_path / "evil"
    with tarfile.open(archive_path, "w") as archive:
        helpers.add_tar_file(archive, "good.txt", b"fine")
        if kind == "dotdot":
            bad_name = "../../evil"
            helpers.add_tar_file(archive, bad_name, b"pwned")
        elif kind == "absolute":
            bad_name = str(outside)
            helpers.add_tar_file(archive, bad_name, b"pwned")
        elif kind == "symlink":
            bad_name = "link"
            helpers.add_tar_symlink(archive, bad_name, str(outside))
        else:
            bad_name = "hard"
            info = tarfile.TarInfo(bad_name)
            info.type = tarfile.LNKTYPE
            info.linkname = "good.txt"
            archive.addfile(info)
    with tarfile.open(archive_path) as archive:
        assert bad_name in archive.getnames()  # the archive really holds the hostile member

    with pytest.raises(DataError) as err:
        safe_extract(archive_path, dest)
    assert repr(bad_name) in str(err.value)
    assert str(archive_path) in str(err.value)
    assert not outside.exists()
    assert not (tmp_path / "extract" / "evil").exists()
    assert not (dest / "good.txt").exists()  # all members are checked before any is written


def test_safe_extract_extracts_plain_members(tmp_path, helpers):
    archive_path = tmp_path / "ok.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        helpers.add_tar_dir(archive, "d")
        helpers.add_tar_file(archive, "d/a.bin", b"\x00\x01")
    out = safe_extract(archive_path, tmp_path / "out")
    assert (out / "d" / "a.bin").read_bytes() == b"\x00\x01"


# ==================================================================================================
# folder of images

COLOURS = {"cat": (200, 40, 40), "ant": (10, 200, 30), "bee": (40, 40, 220)}


def _label_colours(class_names):
    return np.array([COLOURS[name] for name in class_names], dtype=np.float64)


def test_folder_labels_follow_sorted_subfolders_png_and_jpeg(isolated_env, helpers):
    root = helpers.write_image_folder(
        isolated_env.root / "imgs", COLOURS, per_class=4, side=8, suffixes=(".png", ".jpg", ".JPEG")
    )
    cfg = helpers.make_params("data.name=folder", "data.image_size=8", path=root).data
    ds = load_folder(cfg, seed=0)
    assert ds.class_names == ["ant", "bee", "cat"]
    colours = _label_colours(ds.class_names)
    total = 0
    for split in ds.splits.values():
        assert split.images.shape[1:] == (8, 8, 3)
        total += len(split.labels)
        for image, label in zip(split.images, split.labels, strict=True):
            mean = image.reshape(-1, 3).mean(axis=0)
            assert np.abs(mean - colours[label]).max() < 6, (mean, ds.class_names[label])
    assert total == 12
    assert sorted(np.concatenate([s.labels for s in ds.splits.values()]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_channels_and_resize(isolated_env, helpers, channels):
    root = helpers.write_image_folder(isolated_env.root / "imgs", COLOURS, per_class=4, side=8)
    cfg = helpers.make_params("data.name=folder", "data.image_size=12", f"data.channels={channels}", path=root).data
    ds = load_folder(cfg, seed=0)
    for split in ds.splits.values():
        assert split.images.shape[1:] == (12, 12, channels)
        assert split.images.dtype == np.uint8
    image, label = ds.splits["train"].images[0], ds.splits["train"].labels[0]
    rgb = np.array(COLOURS[ds.class_names[label]], dtype=np.float64)
    expected = rgb if channels == 3 else [rgb @ [0.299, 0.587, 0.114]]
    np.testing.assert_allclose(image.reshape(-1, channels).mean(axis=0), expected, atol=1.5)


def test_folder_ingest_end_to_end(isolated_env, helpers):
    root = helpers.write_image_folder(isolated_env.root / "imgs", COLOURS, per_class=4, side=8)
    out = run_ingest(helpers.make_params("data.name=folder", "data.image_size=16", "data.channels=1", path=root))
    manifest = json.loads((out / MANIFEST).read_text())
    assert out == Path("data/processed/folder")
    assert manifest["class_names"] == ["ant", "bee", "cat"]
    assert manifest["image_shape"] == [16, 16, 1]
    assert sum(manifest["counts"].values()) == 12
    assert manifest["ingest"]["test_fraction"] == 0.15


def test_folder_too_small_for_a_test_split_is_an_error_naming_it(isolated_env, helpers):
    # 2 images per class at test_fraction 0.15 rounds to 0 held out: no held-out images to evaluate on
    # (this used to ingest with an empty test split).
    root = helpers.write_image_folder(isolated_env.root / "imgs", COLOURS, per_class=2, side=8)
    with pytest.raises(DataError) as err:
        run_ingest(helpers.make_params("data.name=folder", "data.image_size=8", path=root))
    assert str(root) in str(err.value) and "data.test_fraction=0.15" in str(err.value)
    out = run_ingest(helpers.make_params("data.name=folder", "data.image_size=8", "data.test_fraction=0.5", path=root))
    assert json.loads((out / MANIFEST).read_text())["counts"] == {"train": 3, "test": 3}


def test_folder_of_loose_images_is_one_class_named_after_it(isolated_env, helpers):
    root = isolated_env.root / "faces"
    for i in range(4):  # 4 images at test_fraction 0.15: one held out
        helpers.write_image(root / f"{i}.png", np.full((8, 8), 50 * i, dtype=np.uint8))
    ds = load_folder(helpers.make_params("data.name=folder", "data.image_size=8", path=root).data, seed=0)
    assert ds.class_names == ["faces"]


@pytest.mark.parametrize("where", ["in-class-folder", "beside-class-folders"])
def test_folder_with_text_file_names_it(isolated_env, helpers, where):
    root = helpers.write_image_folder(isolated_env.root / "imgs", COLOURS, per_class=4, side=8)
    notes = (root / "bee" / "notes.txt") if where == "in-class-folder" else (root / "notes.txt")
    notes.write_text("labels are in the folder names")
    cfg = helpers.make_params("data.name=folder", "data.image_size=8", path=root).data
    with pytest.raises(DataError) as err:
        load_folder(cfg, seed=0)
    assert str(notes) in str(err.value)


def test_folder_truncated_png_names_it(isolated_env, helpers):
    root = helpers.write_image_folder(isolated_env.root / "imgs", COLOURS, per_class=4, side=8)
    bad = root / "bee" / "broken.png"
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    helpers.write_image(bad, noise)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    cfg = helpers.make_params("data.name=folder", "data.image_size=8", path=root).data
    with pytest.raises(DataError) as err:
        load_folder(cfg, seed=0)
    assert str(bad) in str(err.value)
    assert "unreadable image" in str(err.value)


def test_folder_empty_is_an_error_naming_it(isolated_env, helpers):
    root = isolated_env.root / "empty"
    root.mkdir()
    with pytest.raises(DataError) as err:
        load_folder(helpers.make_params("data.name=folder", path=root).data, seed=0)
    assert str(root) in str(err.value)
    assert "no PNG/JPEG images" in str(err.value)


def test_folder_without_data_path_names_data_path(isolated_env, helpers):
    with pytest.raises(DataNotFoundError) as err:
        load_folder(helpers.make_params("data.name=folder").data, seed=0)
    assert "data.path" in str(err.value)


def test_folder_data_path_that_does_not_exist_names_it(isolated_env, helpers):
    missing = isolated_env.root / "nowhere"
    with pytest.raises(DataNotFoundError) as err:
        load_folder(helpers.make_params("data.name=folder", path=missing).data, seed=0)
    assert str(missing) in str(err.value)


# ==================================================================================================
# atomicity of the processed output


def _broken_folder(root: Path, helpers) -> Path:
    helpers.write_image_folder(root, COLOURS, per_class=4, side=8)
    bad = root / "cat" / "zz_truncated.png"
    helpers.write_image(bad, np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    bad.write_bytes(bad.read_bytes()[:100])
    return root


def test_failed_ingest_leaves_no_output_and_no_tmp(isolated_env, helpers):
    root = _broken_folder(isolated_env.root / "imgs", helpers)
    params = helpers.make_params("data.name=folder", "data.image_size=8", path=root)
    with pytest.raises(DataError):
        run_ingest(params)
    out = params.data.output_dir
    assert not out.exists()
    assert tmp_leftovers(out.parent) == []


def test_failed_reingest_keeps_previous_output(isolated_env, helpers):
    root = helpers.write_image_folder(isolated_env.root / "imgs", COLOURS, per_class=4, side=8)
    params = helpers.make_params("data.name=folder", "data.image_size=8", path=root)
    out = run_ingest(params)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    _broken_folder(root, helpers)
    with pytest.raises(DataError):
        run_ingest(params)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert tmp_leftovers(out.parent) == []


@pytest.mark.parametrize("previous", [False, True])
def test_failure_while_writing_rolls_back(isolated_env, helpers, monkeypatch, previous):
    root = helpers.write_image_folder(isolated_env.root / "imgs", COLOURS, per_class=4, side=8)
    params = helpers.make_params("data.name=folder", "data.image_size=8", path=root)
    out = params.data.output_dir
    before = {}
    if previous:
        run_ingest(params)
        before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args, **kwargs):  # the arrays are written, the manifest is not
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("imagegen.data.processed.write_json", disk_full)
    params.seed = 5  # different content, so a half-swapped folder would show
    with pytest.raises(OSError, match="No space left"):
        run_ingest(params)
    if previous:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:
        assert not out.exists()
    assert tmp_leftovers(out.parent) == []
