"""tenants.files: walking a tenant's files at any depth and length, never following a symlink (real file system)."""
import os
import subprocess

import pytest

from tenants import files


def _deep(root, depth, name):
    """`depth` nested directories named `name`, made relative to a descriptor (the path outgrows PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("leaf.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"x" * 1234)
        os.close(leaf)
    finally:
        os.close(fd)


@pytest.fixture
def tree(tmp_path):
    yield tmp_path
    subprocess.run(["rm", "-rf", str(tmp_path)], check=False)  # deeper than pytest's own cleanup can go


def test_walks_deeper_than_recursion_and_longer_than_path_max(tree):
    _deep(tree, depth=1500, name="d" * 3)  # 1,500 levels, a 6,000-character path
    entries = list(files.tree_walk(tree))
    leaf = [e for e in entries if e.name == "leaf.bin"]
    assert len(leaf) == 1 and len(leaf[0].path) > 4096
    assert sum(e.is_dir() for e in entries) == 1500
    assert files.tree_bytes(tree) == 1234


def test_symlinks_are_reported_never_followed(tree, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.bin").write_bytes(b"s" * 5000)
    (tree / "own.txt").write_bytes(b"o" * 10)
    os.symlink(outside, tree / "to-outside")
    os.symlink(outside / "secret.bin", tree / "to-secret")
    entries = {e.path: e for e in files.tree_walk(tree)}
    assert set(entries) == {"own.txt", "to-outside", "to-secret"}
    assert not entries["to-outside"].is_dir() and not entries["to-secret"].is_file()
    assert files.tree_bytes(tree) == 10


def test_parents_come_before_their_contents_and_every_entry_once(tree):
    for path in ("a/b/c", "a/d", "e"):
        (tree / path).mkdir(parents=True)
    (tree / "a/b/c/f.txt").write_text("f")
    (tree / "e/g.txt").write_text("gg")
    paths = [e.path for e in files.tree_walk(tree)]
    assert sorted(paths) == sorted(["a", "a/b", "a/b/c", "a/b/c/f.txt", "a/d", "e", "e/g.txt"])
    assert len(paths) == len(set(paths))
    for path in paths:
        if "/" in path:
            assert paths.index(path.rsplit("/", 1)[0]) < paths.index(path)
    assert files.tree_bytes(tree) == 3


def test_a_directory_moved_while_the_walk_is_inside_it_is_an_error_not_a_wrong_answer(tree):
    (tree / "a/b").mkdir(parents=True)
    (tree / "a/b/x").write_text("x")
    (tree / "z").mkdir()
    walk = files.tree_walk(tree)
    for entry in walk:
        if entry.path == "a/b/x":
            os.rename(tree / "a/b", tree / "z/b")  # the walk is inside a/b; its way up now leads to z
            break
    with pytest.raises(files.TreeChanged):
        list(walk)


def test_a_missing_root_measures_zero(tmp_path):
    assert files.tree_bytes(tmp_path / "nothing") == 0
