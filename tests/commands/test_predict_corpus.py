"""`dorl predict` in a child process on a corpus of hostile inputs: one record each, nothing touched.

The child runs without root's right to read anything (see cli_process), so unreadable files
and folders are unreadable to it, as they would be to a lab's service user.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from bad_inputs import NON_UTF8_NAME, Corpus, build_corpus, restore, sample_cells
from cli_process import run_dorl, start_dorl
from tiny_artifact import build_tiny_artifact

pytest.importorskip("onnxruntime", reason="predict runs the tiny artifact with onnxruntime")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="building the tiny artifact needs the onnx package")
    return build_tiny_artifact(tmp_path_factory.mktemp("corpus_art") / "tiny").folder


@pytest.fixture()
def corpus(tmp_path: Path):
    built = build_corpus(tmp_path / "corpus")
    yield built
    restore(built)


def records_of(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.decode("utf-8").splitlines()]


def relative(record: dict[str, Any], root: Path) -> str:
    raw = base64.b64decode(record["source_b64"]) if "source_b64" in record else os.fsencode(record["source"])
    return os.fsdecode(raw)[len(str(root)) + 1:]


def digests(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root (root may read the unreadable ones)."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_every_hostile_input_gets_its_own_record(artifact: Path, corpus: Corpus, tmp_path: Path) -> None:
    (tmp_path / "args").mkdir()
    loop = tmp_path / "args" / "loop_arg.jpg"
    loop.symlink_to(loop)  # a link to itself, given on the command line
    before = digests(corpus.root)
    done = run_dorl("predict", artifact, corpus.root, loop, "--json", "--save-masks", tmp_path / "masks")
    stderr = done.stderr.decode()
    records = records_of(done.stdout)
    by_path = {relative(r, corpus.root): r for r in records if r["source"] != str(loop)}
    assert sorted(by_path) == sorted(corpus.expected), stderr
    for path, (statuses, fragment) in corpus.expected.items():
        r = by_path[path]
        said = " ".join(filter(None, [r["error"], *r["no_cell"], *r["notes"]]))
        assert r["status"] in statuses and fragment in said, (path, r)
        assert (r["label"] is not None) == (r["status"] in ("ok", "uncertain")), r
    (loop_record,) = [r for r in records if r["source"] == str(loop)]
    assert loop_record["status"] == "failed" and "loop of symbolic links" in loop_record["error"]
    cafe = by_path[f"cells/{NON_UTF8_NAME}"]
    assert base64.b64decode(cafe["source_b64"]).endswith(b"caf\xe9_cell.jpg") and "\\xe9" in cafe["source"]
    assert done.returncode == 3, stderr  # some failed, the others labelled
    assert f"{len(corpus.ignored)} non-image files ignored" in stderr
    assert digests(corpus.root) == before  # nothing under the input was written
    masks = {p.relative_to(tmp_path / "masks").as_posix() for p in (tmp_path / "masks").rglob("*.png")}
    labelled = {k for k, r in by_path.items() if r["mask"] is not None}
    assert {"cells/cell_0.png", "cells/monocyte/linked_cell.png"} <= masks and len(masks) == len(labelled)


def test_exif_orientation_gives_the_displayed_size(artifact: Path, corpus: Corpus) -> None:
    done = run_dorl("predict", artifact, corpus.root / "cells" / "exif_rotated.jpg", corpus.root / "cells" /
                    "palette.png", "--json")
    rotated, plain = records_of(done.stdout)
    assert rotated["size"] == plain["size"] and rotated["label"] == plain["label"]


def test_masks_never_overwrite_inputs_or_earlier_files(artifact: Path, corpus: Corpus, tmp_path: Path) -> None:
    cells = corpus.root / "cells"
    before = digests(corpus.root)
    for target in (cells, cells / "monocyte", corpus.root, tmp_path):  # the input, inside it, holding it
        done = run_dorl("predict", artifact, cells, "--json", "--save-masks", target)
        assert done.returncode == 1 and b"input" in done.stderr and done.stdout == b"", done.stderr
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "cell_0.png").write_bytes(b"an earlier result")
    done = run_dorl("predict", artifact, cells / "cell_0.jpg", "--json", "--save-masks", masks)
    assert done.returncode == 1 and b"already holds files" in done.stderr
    assert (masks / "cell_0.png").read_bytes() == b"an earlier result"
    done = run_dorl("predict", artifact, cells / "cell_0.jpg", "--json", "--save-masks", masks, "--overwrite")
    assert done.returncode == 0 and (masks / "cell_0.png").read_bytes().startswith(b"\x89PNG")
    assert oct(os.stat(masks / "cell_0.png").st_mode & 0o777) == "0o644"
    assert digests(corpus.root) == before


def test_exit_codes_say_what_happened(artifact: Path, corpus: Corpus) -> None:
    good = run_dorl("predict", artifact, corpus.root / "cells" / "cell_0.jpg", corpus.root / "cells" / "cell_1.jpg")
    assert good.returncode == 0, good.stderr
    nothing = run_dorl("predict", artifact, corpus.root / "bad" / "zero.jpg", corpus.root / "blank")
    assert nothing.returncode == 4 and b"no image got a label" in nothing.stderr
    partial = run_dorl("predict", artifact, corpus.root / "cells" / "cell_0.jpg", corpus.root / "blank", "--csv")
    assert partial.returncode == 3
    rows = partial.stdout.decode().splitlines()
    assert rows[0].startswith("source,status,label") and len(rows) == 1 + 1 + 3


def test_options_are_refused_before_any_work(artifact: Path, corpus: Corpus, tmp_path: Path) -> None:
    cells = corpus.root / "cells"
    (tmp_path / "file.txt").write_text("x")
    for args, message in [
        (["--backend", "cuda"], b"unknown backend"),
        (["--save-masks", tmp_path / "file.txt"], b"not a folder"),
        (["--site", tmp_path / "nowhere"], b"does not exist"),
        (["--site", artifact], b"this needs 'site-profile': give a site profile from `dorl adapt`"),
        (["--json", "--csv"], b"exclude each other"),
    ]:
        done = run_dorl("predict", artifact, cells, *args)
        assert done.returncode in (1, 2) and message in done.stderr and done.stdout == b"", (args, done.stderr)
    capped = run_dorl("predict", artifact, cells / "cell_0.jpg", "--batch-size", "500")
    assert capped.returncode == 0 and b"using 64" in capped.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_batch_and_keeps_its_results(artifact: Path, tmp_path: Path, signum: int) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):
        (folder / f"cell_{i:03d}.jpg").write_bytes(sample_cells(8)[i % 8].read_bytes())
    process = start_dorl("predict", artifact, folder, "--json", "--batch-size", "2")
    assert process.stdout is not None
    started = time.monotonic()
    first = process.stdout.readline()  # streamed: it arrives long before the last batch
    process.send_signal(signum)
    rest = process.stdout.read()  # through the same buffered reader as the first line (communicate bypasses it)
    assert process.stderr is not None
    stderr = process.stderr.read()
    process.wait(timeout=120)
    records = records_of(first + rest)
    assert json.loads(first)["source"].endswith("cell_000.jpg") and time.monotonic() - started < 120
    assert process.returncode == 128 + signum, stderr
    assert 1 <= len(records) < 60 and len(records) % 2 == 0  # whole batches only
    assert [r["source"] for r in records] == [str(folder / f"cell_{i:03d}.jpg") for i in range(len(records))]
    assert b"stopped early by signal" in stderr and f"{len(records)} images:".encode() in stderr
