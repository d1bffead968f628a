"""Bad data inputs, refused by the real `imagegen` command with exit status 2 and one line on stderr naming the
file or parameter and what was expected, leaving the previous output exactly as it was.

Covered: a `folder` dataset whose entries leave ``data.path`` (through symlinks) or are not regular files, images
whose header claims more pixels than ``data.max_image_pixels``, a processed dataset with a malformed
``manifest.json`` or a truncated array, and ``$IMAGEGEN_CACHE_DIR`` naming something that is not a folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagegen.cli import app
from tests.bad_input_support import snapshot

OFF = ["-S", "tracking.enabled=false"]
COLOURS = {"blue": (0, 0, 255), "red": (255, 0, 0)}


def refused(args: list[str], named: list[str], protected: list[Path]) -> str:
    """Run ``imagegen *args``; check exit status 2, one ``error:`` line holding every text of ``named``, no
    traceback, and ``protected`` unchanged. Returns the line."""
    before = snapshot(protected)
    result = CliRunner().invoke(app, args)
    message = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: ") and "Traceback" not in result.output, result.output
    for text in named:
        assert text in message, (text, message)
    assert snapshot(protected) == before
    return message


@contextlib.contextmanager
def watched_fifo(path: Path) -> Iterator[list[Path]]:
    """A FIFO at ``path``; the yielded list gets ``path`` if anything opens it for reading meanwhile.

    A reader blocks in open() until a writer comes, so a watcher that can open the write end (non-blocking
    succeeds only while a reader is there) has caught a read; it then closes it, and the reader sees an empty
    file instead of hanging the test.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    opened: list[Path] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader
                stop.wait(0.02)
                continue
            opened.append(path)
            os.close(fd)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield opened
    finally:
        stop.set()
        watcher.join()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (IHDR) claims ``width`` x ``height`` 8-bit grey pixels, with a few bytes of data:
    Pillow reads the size from the header alone, so the file is tiny whatever it claims."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@dataclass
class FolderCase:
    root: Path  # data.path: one subfolder of 4 PNGs per class
    out: Path  # the previous ingest output
    outside: Path  # a folder beside data.path

    def ingest(self, *overrides: str) -> list[str]:
        """The `imagegen ingest` command line of this folder into ``out``."""
        sets = [arg for o in overrides for arg in ("-S", o)]
        return ["ingest", "-S", "data.name=folder", "-S", f"data.path={self.root}", *sets, "--out", str(self.out), *OFF]


@pytest.fixture
def folder(isolated_env, helpers, digits: Path) -> FolderCase:
    root = helpers.write_image_folder(isolated_env.root / "images", COLOURS, per_class=4)
    out = shutil.copytree(digits, isolated_env.root / "processed" / "folder")
    outside = isolated_env.root / "outside"
    outside.mkdir()
    return FolderCase(root, out, outside)


# --------------------------------------------------------------------------------------------------
# A folder dataset: inputs stay inside data.path


def link_image_out(case: FolderCase, target: Path) -> Path:
    link = case.root / "red" / "x.png"
    link.symlink_to(target)
    return link


def link_class_folder_out(case: FolderCase, target: Path) -> Path:
    link = case.root / "green"
    link.symlink_to(target.parent, target_is_directory=True)
    return link


def link_relative_up_and_out(case: FolderCase, target: Path) -> Path:
    link = case.root / "red" / "up.png"
    link.symlink_to(os.path.relpath(target, link.parent))
    return link


def link_to_etc_passwd(case: FolderCase, target: Path) -> Path:
    link = case.root / "red" / "passwd.png"
    link.symlink_to("/etc/passwd")
    return link


def link_hidden_dot_png_to_etc_passwd(case: FolderCase, target: Path) -> Path:
    link = case.root / "red" / ".png"
    link.symlink_to("/etc/passwd")
    return link


LINKS_OUT = {
    "image": link_image_out,
    "class-folder": link_class_folder_out,
    "relative-dotdot": link_relative_up_and_out,
    "etc-passwd": link_to_etc_passwd,
    "hidden-dot-png": link_hidden_dot_png_to_etc_passwd,
}


@pytest.mark.parametrize("kind", list(LINKS_OUT))
def test_folder_symlink_leaving_data_path_is_refused_before_it_is_read(folder: FolderCase, kind: str) -> None:
    # The image outside is a FIFO: anything that opened it (a checksum, a decode) would be caught by the watcher.
    target = folder.outside / "imgs" / "0.png"
    with watched_fifo(target) as opened:
        link = LINKS_OUT[kind](folder, target)
        refused(folder.ingest(), [str(link), "outside data.path"], [folder.out])
    assert opened == []


def test_folder_symlink_staying_inside_data_path_is_followed(folder: FolderCase) -> None:
    (folder.root / "red" / "again.png").symlink_to("img00.png")
    (folder.root / "purple").symlink_to(folder.root / "blue", target_is_directory=True)

    result = CliRunner().invoke(app, folder.ingest())

    assert result.exit_code == 0, (result.output, result.exception)
    manifest = json.loads((folder.out / "manifest.json").read_text())
    assert manifest["class_names"] == ["blue", "purple", "red"]
    assert sum(manifest["counts"].values()) == 13


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.relpath(path))  # relative: an absolute tmp path may exceed the 107-byte socket name limit
    return sock


def make_device(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("creating a character device needs CAP_MKNOD")


@pytest.mark.parametrize(
    ("make", "kind"),
    [(make_fifo, "a FIFO"), (make_socket, "a socket"), (make_device, "a character device")],
    ids=["fifo", "socket", "device"],
)
def test_folder_entry_that_is_not_a_regular_file_is_refused_without_opening_it(folder: FolderCase, make, kind) -> None:
    special = folder.root / "red" / "x.png"
    with contextlib.ExitStack() as stack:
        if make is make_fifo:
            opened = stack.enter_context(watched_fifo(special))
        else:
            opened = []
            made = make(special)
            if made is not None:
                stack.callback(made.close)
        refused(folder.ingest(), [str(special), kind, "not a regular file"], [folder.out])
    assert opened == []


@pytest.mark.parametrize(("width", "height"), [(5000, 5000), (50000, 50000)])
def test_folder_image_whose_header_claims_more_pixels_than_the_budget_is_refused_before_decoding(
    folder: FolderCase, width: int, height: int
) -> None:
    # 5000x5000 is past data.max_image_pixels but within Pillow's own limit; 50000x50000 is past both.
    # Either file holds 64 bytes of pixels: decoding it would fail as "unreadable", not name the budget.
    bomb = folder.root / "red" / "bomb.png"
    bomb.write_bytes(png_claiming(width, height))
    message = refused(folder.ingest(), [str(bomb), "data.max_image_pixels=16777216"], [folder.out])
    assert "unreadable" not in message


def test_folder_pixel_budget_is_the_data_max_image_pixels_param(folder: FolderCase) -> None:
    # Every image of the folder is 8x8 = 64 pixels: the first one read is refused, whichever split it is in.
    message = refused(folder.ingest("data.max_image_pixels=63"), ["8x8 = 64", "data.max_image_pixels=63"], [folder.out])
    assert message.removeprefix("error: ").startswith(str(folder.root)), message


# --------------------------------------------------------------------------------------------------
# A processed dataset: manifest.json and the arrays


def train(data: Path, out: Path) -> list[str]:
    """`imagegen train vae` of a tiny model on ``data`` into ``out``."""
    return ["train", "vae", "--data", str(data), "--out", str(out), "-S", "vae.base_filters=8", *OFF]


@pytest.fixture
def processed(isolated_env, digits: Path, model: Path) -> tuple[Path, Path]:
    """A copy of the processed dataset to break, and a previous model output."""
    return shutil.copytree(digits, isolated_env.root / "broken"), shutil.copytree(model, isolated_env.root / "vae")


def test_processed_manifest_that_is_a_json_list_is_refused_naming_it(processed: tuple[Path, Path]) -> None:
    data, out = processed
    manifest = data / "manifest.json"
    manifest.write_text(json.dumps([json.loads(manifest.read_text())]))
    refused(train(data, out), [str(manifest), "a JSON list", "expected a JSON object"], [data, out])


@pytest.mark.parametrize("key", ["counts", "class_names", "image_shape", "content_hash"])
def test_processed_manifest_lacking_a_required_key_is_refused_naming_the_key(
    processed: tuple[Path, Path], key: str
) -> None:
    data, out = processed
    manifest = data / "manifest.json"
    record = json.loads(manifest.read_text())
    del record[key]
    manifest.write_text(json.dumps(record))
    refused(train(data, out), [str(manifest), f"missing key '{key}'"], [data, out])


def test_processed_truncated_images_array_is_refused_naming_the_sizes(processed: tuple[Path, Path]) -> None:
    data, out = processed
    images = data / "train_images.npy"
    full = images.stat().st_size
    images.write_bytes(images.read_bytes()[: full // 2])
    count = json.loads((data / "manifest.json").read_text())["counts"]["train"]
    refused(
        train(data, out),
        [str(images), "truncated", f"expected {full} bytes for shape ({count}, 8, 8, 1)", f"found {full // 2}"],
        [data, out],
    )


# --------------------------------------------------------------------------------------------------
# The user cache folder


@pytest.mark.parametrize("inside", [False, True], ids=["is-a-file", "under-a-file"])
def test_cache_dir_env_naming_a_regular_file_is_refused_naming_the_variable(
    isolated_env, monkeypatch: pytest.MonkeyPatch, digits: Path, inside: bool
) -> None:
    blocker = isolated_env.root / "cache-file"
    blocker.write_text("not a folder\n")
    cache = blocker / "imagegen" if inside else blocker
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(cache))
    out = shutil.copytree(digits, isolated_env.root / "processed" / "mnist")
    args = ["ingest", "-S", "data.name=mnist", "-S", "data.download=false", "--out", str(out), *OFF]
    refused(args, [f"IMAGEGEN_CACHE_DIR={cache}", "expected a folder"], [out, blocker])
