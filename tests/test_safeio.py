"""Outputs are written to a temporary name and moved into place: a write that fails (a
full disk, reproduced with a real file-size limit) leaves the earlier file whole and no
temporary file behind; a second writer on one file is refused, naming the first."""

import errno
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from divconq.errors import DivconqError
from divconq.safeio import WriterLock, atomic_dir, atomic_write, dir_holds_files, is_disk_full

ROW = {"id": "q1", "question": "Q?", "gold": ["1"], "prediction": "1", "score": 1.0, "route": "static",
       "subquestions": [], "sub_answers": [], "seconds": 0.1, "error": None, "dataset": "gsm8k",
       "decomposer": "d" * 3000, "solver": "s", "mode": "static",
       "usage": {"decomposer": {"input_tokens": 1, "output_tokens": 1, "seconds": 0.1}}}


def _full_disk(limit: int):
    """A child whose files cannot grow past ``limit`` bytes: writes fail with EFBIG, like a full disk."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _cli(args, cwd, limit=None):
    return subprocess.run([sys.executable, "-m", "divconq.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, preexec_fn=_full_disk(limit) if limit else None)


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_a_failed_png_write_keeps_the_earlier_drawing(tmp_path):
    png, mmd = tmp_path / "graph.png", tmp_path / "graph.mmd"
    png.write_bytes(b"earlier png " * 100)
    mmd.write_text("earlier mermaid")
    result = _cli(["draw", "--out", str(png)], tmp_path, limit=4096)  # the new PNG is ~40 KB
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "cannot write" in result.stderr
    assert png.read_bytes() == b"earlier png " * 100  # not a 4 KB fragment
    assert _leftovers(tmp_path) == []


def test_a_failed_markdown_report_keeps_the_earlier_table(tmp_path):
    results = tmp_path / "run.jsonl"
    results.write_text(json.dumps(ROW) + "\n")
    table = tmp_path / "table.md"
    table.write_text("earlier table\n")
    # The results file is readable but the table (with a 3000-char spec) cannot be written.
    result = _cli(["report", str(results), "--markdown", str(table)], tmp_path, limit=2048)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "cannot write" in result.stderr
    assert table.read_text() == "earlier table\n"
    assert _leftovers(tmp_path) == []


def test_report_writes_markdown_and_png_in_place(tmp_path):
    results = tmp_path / "run.jsonl"
    results.write_text(json.dumps(ROW) + "\n")
    table, png = tmp_path / "t.md", tmp_path / "t.png"
    result = _cli(["report", str(results), "--markdown", str(table), "--png", str(png)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert table.read_text().startswith("| run |") and png.read_bytes()[:4] == b"\x89PNG"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("out, message", [("graph.mmd", "must name a .png file"), ("graph.txt", "must name a .png")])
def test_draw_refuses_an_out_that_is_not_a_png(tmp_path, out, message):
    result = _cli(["draw", "--out", str(tmp_path / out)], tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_permissions_and_replaces_whole(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic_write(target, "new text")
    assert target.read_text() == "new text" and (target.stat().st_mode & 0o777) == 0o640


def test_atomic_write_refuses_a_directory(tmp_path):
    with pytest.raises(DivconqError, match="is a directory"):
        atomic_write(tmp_path, "x")


def test_atomic_dir_leaves_the_earlier_dir_when_the_writer_fails(tmp_path):
    out = tmp_path / "sft"
    out.mkdir()
    (out / "train.jsonl").write_text("earlier\n")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, replace_existing=True) as scratch:
            (scratch / "train.jsonl").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (out / "train.jsonl").read_text() == "earlier\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]
    with atomic_dir(out, replace_existing=True) as scratch:
        (scratch / "train.jsonl").write_text("new\n")
    assert (out / "train.jsonl").read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["sft"]


HOLD = textwrap.dedent("""
    import sys, time
    from divconq.safeio import WriterLock
    with WriterLock(sys.argv[1], "results file"):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_second_writer_is_refused_naming_the_first_process(tmp_path):
    target = tmp_path / "results.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DivconqError, match=rf"being written by process {holder.pid}\b"):
            WriterLock(target, "results file").acquire()
    finally:
        holder.kill()
        holder.wait()
    with WriterLock(target, "results file"):  # the kernel freed the dead holder's lock
        pass


def _sqlite_full_error(path) -> sqlite3.Error:
    """SQLite's own full-disk error, from a real database capped at a few pages."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA max_page_count = 4")
    db.execute("CREATE TABLE t (x BLOB)")
    try:
        db.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    except sqlite3.Error as exc:
        return exc
    finally:
        db.close()
    raise AssertionError("the capped database took the row")


def test_a_full_disk_is_recognised_however_it_is_reported(tmp_path):
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(RuntimeError("safetensors: No space left on device (os error 28)"))
    assert is_disk_full(_sqlite_full_error(tmp_path / "capped.db"))
    assert not is_disk_full(PermissionError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("file write failed"))  # torch's: no reason given, not claimed here


def test_dir_holds_files_refuses_a_file_in_place_of_the_dir(tmp_path):
    assert not dir_holds_files(tmp_path / "missing") and not dir_holds_files(tmp_path)
    (tmp_path / "x").write_text("x")
    assert dir_holds_files(tmp_path)
    with pytest.raises(DivconqError, match="out .*x exists and is not a directory: choose another path"):
        dir_holds_files(tmp_path / "x", "out")
