"""inputs.py: files, folders and --list expand to an ordered list; bad paths become items, not exceptions."""

from __future__ import annotations

import io
import os
import sys

import pytest

from tokshift_cli.video.inputs import VIDEO_EXTENSIONS, InputItem, display_path, expand_inputs, read_list_file


def touch(path) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"x")
    return str(path)


def paths(items: list[InputItem]) -> list[str]:
    return [i.path for i in items]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """data/ with nested videos, a non-video, hidden files, mixed-case extensions and a symlink loop."""
    monkeypatch.chdir(tmp_path)
    for rel in ["data/b.mp4", "data/a.MKV", "data/sub/c.webm", "data/sub/deeper/d.avi", "data/notes.txt",
                "data/.hidden.mp4", "data/._a.mp4", "data/.cache/e.mp4", "data/Z.mov", "data/with space.mp4"]:
        touch(rel)
    os.symlink("..", "data/sub/loop")  # data/sub/loop -> data: a cycle
    return tmp_path


def test_folder_recursive_sorted_and_filtered(tree):
    items = expand_inputs(["data"])
    assert all(i.ok for i in items)
    # byte order per path component: upper case first; sub-folders sorted with files; hidden skipped
    assert paths(items) == ["data/Z.mov", "data/a.MKV", "data/b.mp4", "data/sub/c.webm",
                            "data/sub/deeper/d.avi", "data/with space.mp4"]


def test_symlink_loop_is_walked_once(tree):
    items = expand_inputs(["data/sub"])
    # data/sub/loop/ is data/ itself: its videos come in once, data/sub (already walked) is not re-entered
    assert sorted(paths(items)) == sorted(["data/sub/c.webm", "data/sub/deeper/d.avi", "data/sub/loop/Z.mov",
                                           "data/sub/loop/a.MKV", "data/sub/loop/b.mp4",
                                           "data/sub/loop/with space.mp4"])
    assert len(items) == len(set(os.path.realpath(p) for p in paths(items)))


def test_order_is_argument_order_and_every_input_is_kept(tree):
    """A file named twice (by any spelling, or inside a folder also given) is two inputs: one result each."""
    items = expand_inputs(["data/sub/c.webm", "data", "./data/b.mp4", "data/sub/../b.mp4"])
    assert paths(items) == ["data/sub/c.webm", "data/Z.mov", "data/a.MKV", "data/b.mp4", "data/sub/c.webm",
                            "data/sub/deeper/d.avi", "data/with space.mp4", "./data/b.mp4", "data/sub/../b.mp4"]


def test_urls_are_inputs_as_given(tree):
    items = expand_inputs(["http://127.0.0.1:8/a.mp4", "HTTPS://example.invalid/b.webm?x=1", "data/b.mp4"])
    assert paths(items) == ["http://127.0.0.1:8/a.mp4", "HTTPS://example.invalid/b.webm?x=1", "data/b.mp4"]
    assert all(i.ok for i in items)


def test_explicit_file_taken_whatever_its_extension(tree):
    items = expand_inputs(["data/notes.txt", "data/.hidden.mp4"])
    assert paths(items) == ["data/notes.txt", "data/.hidden.mp4"] and all(i.ok for i in items)


def test_missing_broken_and_empty_are_items_in_place(tree):
    os.symlink("nowhere.mp4", "data/broken.mp4")
    os.makedirs("empty/inner")
    touch("empty/inner/readme.md")
    os.symlink("selfloop", "selfloop")
    items = expand_inputs(["missing.mp4", "data/sub/c.webm", "empty", "selfloop", "data/broken.mp4"])
    assert paths(items) == ["missing.mp4", "data/sub/c.webm", "empty", "selfloop", "data/broken.mp4"]
    assert items[0].error == "no such file or directory"
    assert items[1].ok
    assert items[2].error.startswith("no video files (extensions: .mp4 .mkv .webm .avi .mov and ")
    assert "symbolic link loop" in items[3].error
    assert items[4].error.startswith("broken symbolic link") and "nowhere.mp4" in items[4].error
    assert str(items[0]) == "missing.mp4: no such file or directory"


def test_broken_link_inside_folder_is_reported(tree):
    os.symlink("gone.mp4", "data/sub/broken.mp4")
    items = expand_inputs(["data/sub"])
    bad = [i for i in items if not i.ok]
    assert paths(bad) == ["data/sub/broken.mp4"] and bad[0].error.startswith("broken symbolic link")
    assert paths(items)[:2] == ["data/sub/broken.mp4", "data/sub/c.webm"]  # in its sorted place


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_unreadable_folder():
    """As root too: the check runs as an unprivileged user (tests/procs.py: setpriv), since root reads any
    folder."""
    import shutil
    import tempfile

    from procs import python_unprivileged

    root = tempfile.mkdtemp(prefix="tokshift-perm-")
    os.chmod(root, 0o755)
    locked = os.path.join(root, "locked")
    os.makedirs(locked)
    touch(os.path.join(locked, "x.mp4"))
    os.chmod(locked, 0)
    try:
        r = python_unprivileged("import sys; from tokshift_cli.video.inputs import expand_inputs; "
                                "print(expand_inputs([sys.argv[1]])[0].error)", locked)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip() == "permission denied"
    finally:
        os.chmod(locked, 0o755)
        shutil.rmtree(root)


def test_list_file(tree):
    with open("list.txt", "wb") as f:
        f.write(b"\xef\xbb\xbf# my videos\n\ndata/b.mp4\n  data/with space.mp4  \r\n# data/a.MKV\ndata/sub\n"
                b"missing.mp4\n")
    items = expand_inputs(["data/Z.mov"], list_file="list.txt")
    assert paths(items) == ["data/Z.mov", "data/b.mp4", "data/with space.mp4", "data/sub/c.webm",
                            "data/sub/deeper/d.avi", "data/sub/loop/Z.mov", "data/sub/loop/a.MKV",
                            "data/sub/loop/b.mp4", "data/sub/loop/with space.mp4", "missing.mp4"]
    assert [i.ok for i in items] == [True] * 9 + [False]


def test_list_paths_are_relative_to_cwd_not_list_folder(tree):
    os.makedirs("lists")
    with open("lists/l.txt", "w") as f:
        f.write("data/b.mp4\n")
    assert paths(expand_inputs([], list_file="lists/l.txt")) == ["data/b.mp4"]
    assert expand_inputs([], list_file="lists/l.txt")[0].ok


def test_missing_list_file_is_an_item(tree):
    items = expand_inputs(["data/b.mp4"], list_file="nolist.txt")
    assert items[0].ok and items[1].path == "nolist.txt"
    assert items[1].error == "cannot read the --list file (no such file or directory)"


def test_list_from_stdin(tree, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"data/b.mp4\ndata/a.MKV\n")))
    assert read_list_file("-") == ["data/b.mp4", "data/a.MKV"]


def test_non_utf8_names_survive(tree):
    raw = b"data/caf\xe9 \xff.mp4"  # Latin-1 bytes: not valid UTF-8
    with open(raw, "wb") as f:
        f.write(b"x")
    items = expand_inputs(["data"])
    item = next(i for i in items if os.fsencode(i.path) == raw)
    assert item.ok and os.path.exists(item.path)
    assert item.display == "data/caf\\xe9 \\xff.mp4"
    item.display.encode("utf-8")  # printable
    with open("l.txt", "wb") as f:
        f.write(raw + b"\n")
    from_list = expand_inputs([], list_file="l.txt")
    assert [os.fsencode(i.path) for i in from_list] == [raw] and from_list[0].ok
    assert display_path("plain.mp4") == "plain.mp4"


def test_extensions():
    for ext in ["mp4", "mkv", "webm", "avi", "mov", "m4v", "mpg", "mpeg", "flv", "wmv", "3gp", "ts", "ogv"]:
        assert ext in VIDEO_EXTENSIONS


def test_custom_extensions_and_empty(tree):
    assert paths(expand_inputs(["data"], extensions=[".WEBM"])) == ["data/sub/c.webm"]
    assert expand_inputs([]) == []
