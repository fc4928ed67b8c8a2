"""`rag ingest` reads only what is in the folder it is given, each file once, whatever its links."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_cli.documents import batches, find_files


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder to ingest, with links that stay inside it and links that lead out of it.

    docs/
      guide.md            a file
      README              a file without a suffix
      readme.md -> README only the link's name says Markdown
      copy.md -> guide.md a second name for a file already read
      notes/
        plan.txt
        up -> ..          a loop
      alias -> notes      a folder already walked
      leak.md -> ../secret/key.md
      secrets -> ../secret
      gone.md -> ../nowhere.md  (broken, outside)
    secret/key.md         outside the folder
    """
    docs, secret = tmp_path / "docs", tmp_path / "secret"
    (docs / "notes").mkdir(parents=True)
    secret.mkdir()
    (secret / "key.md").write_text("outside")
    (docs / "guide.md").write_text("guide")
    (docs / "README").write_text("readme")
    (docs / "notes" / "plan.txt").write_text("plan")
    links = {
        "readme.md": "README",
        "copy.md": "guide.md",
        "notes/up": "..",
        "alias": "notes",
        "leak.md": "../secret/key.md",
        "secrets": "../secret",
        "gone.md": "../nowhere.md",
    }
    for link, target in links.items():
        (docs / link).symlink_to(target)
    return docs


def test_each_file_in_the_folder_is_read_once_and_links_out_of_it_are_listed(tree: Path) -> None:
    found = find_files([tree])

    assert [(file.relative_to(tree).as_posix(), root) for file, root in found.files] == [
        ("guide.md", tree),
        ("notes/plan.txt", tree),
        ("readme.md", tree),
    ]
    assert found.outside_links == [(tree / name, tree) for name in ("gone.md", "leak.md", "secrets")]


def test_a_folder_given_twice_lists_each_link_out_once(tree: Path) -> None:
    found = find_files([tree, tree])

    assert len(found.files) == 6
    assert [link.name for link, _ in found.outside_links] == ["gone.md", "leak.md", "secrets"]


def test_a_subfolder_is_a_boundary_of_its_own(tree: Path) -> None:
    found = find_files([tree / "notes"])

    assert [file.name for file, _ in found.files] == ["plan.txt"]
    assert found.outside_links == [(tree / "notes" / "up", tree / "notes")]


def test_paths_given_by_name_are_read_wherever_they_lead(tree: Path, tmp_path: Path) -> None:
    linked_folder = tmp_path / "linked-docs"
    linked_folder.symlink_to(tree)

    found = find_files([tree / "leak.md", linked_folder / "notes"])

    assert found.files == [
        (tree / "leak.md", tree),
        (linked_folder / "notes" / "plan.txt", linked_folder / "notes"),
    ]
    assert [link.name for link, _ in found.outside_links] == ["up"]


def test_batches_hold_at_most_their_count_and_bytes_and_a_larger_file_goes_alone(tmp_path: Path) -> None:
    sizes = {"a.md": 400, "b.md": 400, "c.md": 2500, "d.md": 100, "e.md": 100, "f.md": 100}
    items = []
    for name, size in sizes.items():
        (tmp_path / name).write_text("x" * size)
        items.append((tmp_path / name, tmp_path))

    batched = [[path.name for path, _ in batch] for batch in batches(items, size=2, max_bytes=1000)]

    assert batched == [["a.md", "b.md"], ["c.md"], ["d.md", "e.md"], ["f.md"]]
