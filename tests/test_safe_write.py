"""Safe writes: outputs checked before any work, locked, written beside and renamed into place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dorl.artifacts import write_manifest
from dorl.safe_write import OutputError, atomic_file, atomic_folder, check_output, output_lock, write_bytes


def artifact(folder: Path, kind: str, content: bytes = b"weights") -> Path:
    folder.mkdir(parents=True)
    (folder / "data.bin").write_bytes(content)
    write_manifest(folder, kind, ["data.bin"])
    return folder


def test_an_output_may_not_be_hold_or_sit_inside_an_input(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "pbc").mkdir(parents=True)
    (images / "pbc" / "cell.png").write_bytes(b"x")
    for target in (images, images / "pbc", images / "pbc" / "masks", tmp_path):
        with pytest.raises(OutputError, match="input"):
            check_output(target, inputs=[images])
    with pytest.raises(OutputError, match="input"):
        check_output(images / "pbc" / "cell.png", inputs=[images / "pbc" / "cell.png"], folder=False)
    link = tmp_path / "link"
    link.symlink_to(images)
    with pytest.raises(OutputError, match="input"):  # the same folder through a link
        check_output(link / "masks", inputs=[images])
    with pytest.raises(OutputError, match="where input images were found"):
        check_output(images / "pbc", input_folders=[images / "pbc"])
    assert check_output(tmp_path / "elsewhere", inputs=[images]) == tmp_path / "elsewhere"


def test_artifacts_are_never_written_into_or_over_by_another_kind(tmp_path: Path) -> None:
    onnx = artifact(tmp_path / "onnx", "onnx")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="dorl onnx folder: refusing to write a site-profile"):
            check_output(onnx, kind="site-profile", overwrite=overwrite)
    with pytest.raises(OutputError, match="inside the dorl artifact"):
        check_output(onnx / "site", kind="site-profile")
    profile = artifact(tmp_path / "site", "site-profile")
    with pytest.raises(OutputError, match="pass --overwrite"):
        check_output(profile, kind="site-profile")
    assert check_output(profile, kind="site-profile", overwrite=True) == profile


def test_folders_of_other_files_and_existing_files(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep me")
    with pytest.raises(OutputError, match="holding other files, not a site-profile"):
        check_output(tmp_path / "notes", kind="site-profile", overwrite=True)
    with pytest.raises(OutputError, match="pass --overwrite to replace those of the same name"):
        check_output(tmp_path / "notes")
    assert check_output(tmp_path / "notes", overwrite=True)  # plain files (masks): same names replaced
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_output(tmp_path / "notes" / "a.txt")
    with pytest.raises(OutputError, match="already exists"):
        check_output(tmp_path / "notes" / "a.txt", folder=False)
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", kind="site-profile")


def test_atomic_folder_replaces_or_leaves_everything_as_it_was(tmp_path: Path) -> None:
    target = artifact(tmp_path / "site", "site-profile", b"old")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(RuntimeError), atomic_folder(target, kind="site-profile", overwrite=True) as tmp:
        (tmp / "data.bin").write_bytes(b"half")
        raise RuntimeError("killed half way")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    with atomic_folder(target, kind="site-profile", overwrite=True) as tmp:
        (tmp / "data.bin").write_bytes(b"new")
        write_manifest(tmp, "site-profile", ["data.bin"])
    assert (target / "data.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temporary sibling, no lock left
    assert oct(target.stat().st_mode & 0o777) == "0o755"
    assert {oct(p.stat().st_mode & 0o777) for p in target.iterdir()} == {"0o644"}


def test_a_killed_writer_leaves_the_old_folder_and_its_leftovers_are_swept(tmp_path: Path) -> None:
    target = artifact(tmp_path / "site", "site-profile", b"old")
    script = textwrap.dedent(f"""
        import os, signal
        from dorl.safe_write import atomic_folder
        with atomic_folder({str(target)!r}, kind="site-profile", overwrite=True) as tmp:
            (tmp / "data.bin").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL
    assert (target / "data.bin").read_bytes() == b"old"
    assert any(p.name.startswith(".site.tmp-") for p in tmp_path.iterdir())
    with atomic_folder(target, kind="site-profile", overwrite=True) as tmp:
        (tmp / "data.bin").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_a_terminated_command_cleans_up_on_its_way_out(tmp_path: Path) -> None:
    target = artifact(tmp_path / "site", "site-profile", b"old")
    script = textwrap.dedent(f"""
        import signal, time
        from dorl.cli import _terminate
        from dorl.safe_write import atomic_folder
        signal.signal(signal.SIGTERM, _terminate)  # what `dorl`'s main() installs
        with atomic_folder({str(target)!r}, kind="site-profile", overwrite=True) as tmp:
            (tmp / "data.bin").write_bytes(b"half")
            print("writing", flush=True)
            time.sleep(60)
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as writer:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(timeout=60) == 128 + signal.SIGTERM
    assert (target / "data.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temporary sibling, no lock left


def test_a_second_writer_fails_with_a_sentence(tmp_path: Path) -> None:
    target = tmp_path / "site"
    script = textwrap.dedent(f"""
        import sys, time
        from dorl.safe_write import output_lock
        with output_lock({str(target)!r}):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        message = f"another dorl process \\(pid {holder.pid}\\) is writing .*site"
        with pytest.raises(OutputError, match=message), output_lock(target):
            pass
        with pytest.raises(OutputError, match="another dorl process"), atomic_folder(target):
            pass
    finally:
        holder.communicate(b"", timeout=60)
    with output_lock(target), output_lock(target):  # free again, and re-entrant within a process
        assert (tmp_path / ".site.lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".site.lock").exists()


def test_atomic_file_never_clobbers_without_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    write_bytes(path, b"first")
    with pytest.raises(OutputError, match="already exists"):
        write_bytes(path, b"second")
    assert path.read_bytes() == b"first"
    with pytest.raises(ZeroDivisionError), atomic_file(path, overwrite=True) as f:
        f.write(b"partial")
        1 / 0  # noqa: B018
    assert path.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["mask.png"]
    write_bytes(path, b"second", overwrite=True)
    assert path.read_bytes() == b"second" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == '["mask.png"]'


def test_an_output_under_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="afile is a file, not a folder"):
        check_output(tmp_path / "afile" / "sub")
    with pytest.raises(OutputError, match="afile is a file, not a folder"):
        check_output(tmp_path / "afile" / "sub" / "deeper.json", folder=False)
