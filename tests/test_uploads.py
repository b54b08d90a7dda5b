"""Submissions as people upload them: renamed copies, sub-folders, several candidates, other encodings."""
import codecs
import os

import pytest
from hypothesis import given, settings, strategies as st

from pack.labs import REGISTRY
from parent import submission as reader
from parent.submission import find_uploads, lab_of, read_submission, text_bytes
from tests.helpers import LAB_FILES, ROOT, grade_many

LAB1, LAB3 = LAB_FILES["lab1"], LAB_FILES["lab3"]
SOLUTION1 = (ROOT / "solutions" / LAB1).read_bytes()

# what browsers, Drive, Windows and macOS name a second copy of a file, and editors' case: each is that lab
RENAMED = ["lab1_attention (1).py", "lab1_attention(2).py", "Copy of lab1_attention.py", "lab1_attention - Copy.py",
           "lab1_attention - Copy (3).py", "lab1_attention copy.py", "lab1_attention copy 2.py", "Lab1_Attention.py",
           "LAB1_ATTENTION.PY", "Copy of Copy of lab1_attention (1).py", "lab1 attention.py", "lab1-attention.py",
           " lab1_attention .py"]
NOT_A_LAB = ["lab1.py", "attention.py", "lab1_attention_old.py", "lab1_attention.py.bak", "lab1_attention.txt",
             "my_lab1_attention.py", "lab1_attention2.py", "lab1_attentions.py", "lab1_attention (x).py", ".py",
             "lab1_attention.", "lab12_attention.py"]


@pytest.mark.parametrize("name", RENAMED)
def test_a_renamed_upload_is_its_lab(name):
    assert lab_of(name)[0].name == "lab1" and lab_of(name)[1] == "file"
    assert lab_of(name.replace(".py", ".ipynb").replace(".PY", ".IPYNB"))[1] == "notebook"


@pytest.mark.parametrize("name", NOT_A_LAB)
def test_another_name_is_no_lab(name):
    assert lab_of(name) is None


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=300))
def test_any_file_name_is_a_lab_or_not_without_error(name):
    found = lab_of(name)
    assert found is None or (found[0] in REGISTRY and found[1] in ("file", "notebook"))


def test_the_name_rule_can_fail():
    """The old rule (a lab's exact name) misses every renamed copy, and a rule that took any name with the lab's
    number in it would take files that are not the lab."""
    assert not [name for name in RENAMED if name == LAB1 or name == LAB1.replace(".py", ".ipynb")] == RENAMED
    loose = lambda name: "lab1" in name.lower()  # noqa: E731
    assert [name for name in NOT_A_LAB if loose(name)]


def write(path, data: bytes, mtime: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime, mtime))


def test_the_newest_candidate_is_graded_and_the_note_says_which(tmp_path):
    stale = SOLUTION1.replace(b"return", b"return  ")
    write(tmp_path / "backup" / LAB1, stale, 1_000_000_000)  # sorts first, and is older
    write(tmp_path / "work" / "Lab1_Attention (1).py", SOLUTION1, 2_000_000_000)
    sources, refused, found = read_submission(tmp_path)
    assert sources[LAB1] == SOLUTION1 and not refused
    assert found[LAB1] == ("graded work/Lab1_Attention (1).py as lab1_attention.py (the newest of 2; also found: "
                           "backup/lab1_attention.py)")
    os.utime(tmp_path / "backup" / LAB1, ns=(3_000_000_000,) * 2)  # now the backup is newer: it wins
    assert read_submission(tmp_path).sources[LAB1] == stale


def test_equally_new_candidates_prefer_the_labs_own_name_then_the_file(tmp_path):
    for name in ("Copy of lab1_attention.py", LAB1, "lab1_attention.ipynb", f"sub/{LAB1}"):
        write(tmp_path / name, SOLUTION1, 5_000_000_000)
    ranked = [u.path for u in find_uploads(tmp_path)[0]["lab1"]]
    assert ranked == [LAB1, f"sub/{LAB1}", "lab1_attention.ipynb", "Copy of lab1_attention.py"]
    assert read_submission(tmp_path).found[LAB1].startswith(f"graded {LAB1} (the newest of 4")


def test_the_own_file_alone_gets_no_note_wherever_it_is_and_each_lab_may_live_elsewhere(tmp_path):
    write(tmp_path / LAB1, SOLUTION1, 1)
    write(tmp_path / "week3" / "deep" / LAB3, (ROOT / "solutions" / LAB3).read_bytes(), 1)
    sources, refused, found = read_submission(tmp_path)
    assert set(sources) == {LAB1, LAB3} and not found  # each is its own file, alone: nothing to say


def test_folders_no_lab_lives_in_are_not_searched(tmp_path):
    for folder in ("__MACOSX", ".ipynb_checkpoints", ".git", "__pycache__"):
        write(tmp_path / folder / LAB1, SOLUTION1, 9_000_000_000)  # newer than anything: still never taken
    assert find_uploads(tmp_path) == ({}, [])
    write(tmp_path / "lab1.py", b"x = 1\n", 1)
    sources, refused, found = read_submission(tmp_path)
    assert not sources and found[LAB1].startswith("expected lab1_attention.py (or lab1_attention.ipynb); found: lab1.py")


def test_a_file_that_is_not_regular_keeps_its_reason(tmp_path):
    os.symlink(ROOT / "solutions" / LAB1, tmp_path / "lab1_attention (1).py")
    sources, refused, _ = read_submission(tmp_path)
    assert not sources and "symbolic link" in refused[LAB1]


TEXT = "# lab — ünïcode ✓\nx = 1\n"


@pytest.mark.parametrize("encoded", [
    TEXT.encode("utf-8"), codecs.BOM_UTF8 + TEXT.encode("utf-8"), codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"),
    codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), TEXT.encode("utf-16-le"), TEXT.encode("utf-16-be"),
    TEXT.encode("utf-32"),
], ids=["utf8", "utf8-bom", "utf16le-bom", "utf16be-bom", "utf16le", "utf16be", "utf32-bom"])
def test_text_in_any_unicode_encoding_is_read_as_utf8(encoded):
    assert text_bytes(encoded) == TEXT.encode("utf-8")


def test_the_encoding_rule_can_fail_and_leaves_other_bytes_alone():
    assert b"\0" in TEXT.encode("utf-16-le") and TEXT.encode("utf-16-le") != TEXT.encode("utf-8")  # the old reading
    for data in (b"\x00\x01\x02binary\xff", b"x = '\\x00'\n", b"caf\xe9 = 1\n", b""):
        assert text_bytes(data) == data


def test_a_notebook_saved_as_utf16_is_read(tmp_path):
    import json
    page = json.loads((ROOT / "notebooks" / "lab1_attention.ipynb").read_text())
    for cell in page["cells"]:
        if "".join(cell.get("source", [])).startswith("%%lab"):
            cell["source"] = ["%%lab\n", "x = 'ü'\n"]
    write(tmp_path / "Copy of lab1_attention.ipynb", codecs.BOM_UTF16_LE + json.dumps(page).encode("utf-16-le"), 1)
    sources, refused, found = read_submission(tmp_path)
    assert not refused and "x = 'ü'" in sources[LAB1].decode("utf-8")


def test_a_class_uploaded_as_people_do_is_graded_in_full(tmp_path):
    """End to end: renamed, in a sub-folder, split over two folders, with a stale backup that sorts first, and in
    UTF-16: every lab gets full marks and its note."""
    sub = tmp_path / "alice"
    text = {lab: (ROOT / "solutions" / file).read_bytes() for lab, file in LAB_FILES.items()}
    write(sub / "backup" / LAB_FILES["lab2"], (ROOT / "labs" / LAB_FILES["lab2"]).read_bytes(), 1_000_000_000)
    write(sub / "project" / "Lab2_Multihead (1).py", text["lab2"], 2_000_000_000)
    write(sub / "Copy of lab1_attention.py", text["lab1"], 1)
    write(sub / "part2" / LAB3, codecs.BOM_UTF16_LE + text["lab3"].decode().encode("utf-16-le"), 1)
    graded = grade_many({"alice": (sub, ["lab1", "lab2", "lab3"])})["alice"]
    for lab in ("lab1", "lab2", "lab3"):
        assert graded[lab]["score"] == graded[lab]["max"], (lab, graded[lab])
    assert "Copy of lab1_attention.py" in graded["lab1"]["notes"][0]
    assert graded["lab2"]["notes"][0].startswith("graded project/Lab2_Multihead (1).py as lab2_multihead.py "
                                                 "(the newest of 2")


def test_the_search_is_bounded_in_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "MAX_ENTRIES", 50)
    for i in range(60):
        (tmp_path / f"a{i:03}.txt").write_text("")
    write(tmp_path / "zz" / LAB1, SOLUTION1, 1)
    assert find_uploads(tmp_path)[0] == {}  # past the bound: not looked at
    monkeypatch.setattr(reader, "MAX_ENTRIES", 100)
    assert list(find_uploads(tmp_path)[0]) == ["lab1"]
