"""The notebooks: generated from the lab files, run end to end in a real Jupyter kernel (nbclient) as shipped (every
lab "not started") and with the reference solutions in their cells (every lab passes), and a cell as shipped never
overwrites work done in a terminal."""
import shutil
from concurrent.futures import ThreadPoolExecutor

import nbclient
import nbformat
import pytest

from worker import notebook
from tests.helpers import LAB_FILES, ROOT
from tools.make_notebooks import chunks, expected_notebooks, main as make_notebooks
from tools.make_stubs import expected_stubs
from tools.release import write_release

NOTEBOOKS = {lab: name.replace(".py", ".ipynb") for lab, name in LAB_FILES.items()}


def test_notebooks_are_generated_from_the_lab_files():
    assert make_notebooks(["--check"]) == 0, "run: python tools/make_notebooks.py"
    assert {p.name for p in (ROOT / "notebooks").glob("*.ipynb")} == set(NOTEBOOKS.values())
    for name in NOTEBOOKS.values():  # valid nbformat 4 (they are written with the standard library)
        nbformat.validate(nbformat.read(ROOT / "notebooks" / name, as_version=4))


def test_every_todo_of_a_lab_file_is_in_a_lab_cell():
    for lab, name in LAB_FILES.items():
        nb = nbformat.reads(expected_notebooks()[NOTEBOOKS[lab]], as_version=4)
        cells = "".join(c.source for c in nb.cells if c.source.startswith("%%lab"))
        stub = expected_stubs()[name]
        todos = [line.strip() for line in stub.splitlines() if "# TODO" in line]
        assert todos and all(todo in cells for todo in todos), lab


def run(folder, lab) -> list:
    """Execute a notebook of `folder`'s notebooks/ in a fresh kernel; its code cells' text outputs."""
    path = folder / "notebooks" / NOTEBOOKS[lab]
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    return ["".join(o.get("text", "") for o in c.outputs) for c in nb.cells if c.cell_type == "code"]


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shipped") / "pack"
    write_release(folder)
    with ThreadPoolExecutor(2) as pool:
        return folder, dict(zip(NOTEBOOKS, pool.map(lambda lab: run(folder, lab), NOTEBOOKS)))


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """The release with the solutions' cells in its notebooks and the solutions as the earlier labs' files; each lab's
    own file stays the stub, so its notebook must write it."""
    folder = tmp_path_factory.mktemp("filled") / "pack"
    write_release(folder)
    for name, text in expected_notebooks(filled=True).items():
        (folder / "notebooks" / name).write_text(text)
    for name in LAB_FILES.values():
        shutil.copyfile(ROOT / "solutions" / name, folder / "labs" / name)

    def one(lab):
        (folder / "labs" / LAB_FILES[lab]).write_text(expected_stubs()[LAB_FILES[lab]])
        return run(folder, lab)
    with ThreadPoolExecutor(2) as pool:
        return folder, dict(zip(NOTEBOOKS, pool.map(one, NOTEBOOKS)))


@pytest.mark.parametrize("lab", list(NOTEBOOKS))
def test_a_shipped_notebook_runs_and_grades_not_started(lab, shipped):
    folder, outputs = shipped
    card = flat(outputs[lab][-1])
    assert "not started" in card and f"(lab {lab[3]} not started)" in card, card[-600:]
    # labs 4-6 import the stub of lab 2, whose module-level `mha` raises: their try cells stop at a NameError
    assert "not written yet" in " ".join(outputs[lab]) or lab in ("lab4", "lab5", "lab6")
    assert (folder / "labs" / LAB_FILES[lab]).read_text() == expected_stubs()[LAB_FILES[lab]]  # nothing was saved


@pytest.mark.parametrize("lab", list(NOTEBOOKS))
def test_a_filled_notebook_saves_its_cells_and_passes(lab, filled):
    folder, outputs = filled
    card = flat(outputs[lab][-1])
    assert f"(lab {lab[3]} passed)" in card, card[-800:]
    assert "Traceback" not in "".join(outputs[lab])
    assert "# TODO" not in (folder / "labs" / LAB_FILES[lab]).read_text()


def test_the_try_cells_show_the_students_code_at_work(filled):
    _, outputs = filled
    text = " ".join(" ".join(o) for o in outputs.values())
    assert "row sums" in text and "-> output (2, 6, 16)" in text and "same tokens: True" in text
    assert "greedy sample: 'hello transformer!" in text


@pytest.fixture
def lab_file(tmp_path):
    (tmp_path / "labs").mkdir()
    path = tmp_path / "labs" / LAB_FILES["lab1"]
    path.write_text((ROOT / "solutions" / LAB_FILES["lab1"]).read_text())
    notebook.STATE.update(lab="lab1", root=tmp_path, file=path)
    return path


def test_a_cell_as_shipped_keeps_the_terminals_work(lab_file):
    before = lab_file.read_text()
    stub = chunks(expected_stubs()[LAB_FILES["lab1"]])[1]["scaled_dot_product_attention"]
    ran = notebook.save(stub, notebook.digest(stub))
    assert lab_file.read_text() == before  # nothing saved
    assert "weights = torch.softmax(scores, dim=-1)" in ran and "NotImplementedError" not in ran  # the file's version runs


def test_a_changed_cell_replaces_its_definitions_and_keeps_a_backup(lab_file):
    before = lab_file.read_text()
    cell = "def _scale(q):\n    return q.size(-1) ** -0.5\n\n\ndef causal_mask(T, device=None):\n    return None\n"
    notebook.save(cell, "0" * 12)
    text = lab_file.read_text()
    assert "return None" in text and "def _scale" in text and "torch.tril" not in text
    assert text.count("def causal_mask") == 1 and "def scaled_dot_product_attention" in text
    assert (lab_file.parent / f".{lab_file.name}.bak").read_text() == before


def test_a_cell_that_does_not_parse_is_not_saved(lab_file, capsys):
    before = lab_file.read_text()
    notebook.save("def causal_mask(T, device=None)\n    return None\n", "")
    assert lab_file.read_text() == before and "not saved" in capsys.readouterr().out


def test_a_notebook_handed_in_is_graded_as_its_lab_file(tmp_path):
    """Gradescope or --submission: lab2_multihead.ipynb instead of the .py, or the notebook downloaded as a script."""
    import json
    from tests.helpers import run_grader
    filled = nbformat.reads(expected_notebooks(filled=True)[NOTEBOOKS["lab2"]], as_version=4)
    notebook_dir, script_dir, broken_dir = (tmp_path / d for d in ("notebook", "script", "broken"))
    for folder in (notebook_dir, script_dir, broken_dir):
        folder.mkdir()
    nbformat.write(filled, notebook_dir / NOTEBOOKS["lab2"])
    script = "\n".join(f"get_ipython().run_cell_magic({'lab'!r}, {c.source.split(chr(10))[0][6:]!r}, "
                       f"{c.source.partition(chr(10))[2]!r})" for c in filled.cells if c.source.startswith("%%lab"))
    (script_dir / LAB_FILES["lab2"]).write_text("#!/usr/bin/env python\n# coding: utf-8\n\n" + script + "\n")
    (broken_dir / NOTEBOOKS["lab2"]).write_text("{ not json")
    for folder, status in ((notebook_dir, "passed"), (script_dir, "passed"), (broken_dir, "error")):
        proc = run_grader("lab2", "--submission", folder, "--json", folder / "r.json")
        lab = json.loads((folder / "r.json").read_text())["extra_data"]["labs"]["lab2"]
        assert lab["status"] == status, (folder.name, proc.stdout[-1500:])
    assert "not a readable notebook" in flat(proc.stdout)


def test_a_notebook_opened_alone_fetches_the_pack_from_its_url(tmp_path):
    """Colab's case: no pack around the notebook; the setup cell unpacks the release zip from PACK_URL (a file:// URL
    here), installs what is missing (nothing, here) and grades."""
    release = tmp_path / "release"
    write_release(release)
    archive = shutil.make_archive(str(tmp_path / "pack"), "zip", tmp_path, "release")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / NOTEBOOKS["lab1"]).write_text(expected_notebooks(url=f"file://{archive}")[NOTEBOOKS["lab1"]])
    nb = nbformat.read(alone / NOTEBOOKS["lab1"], as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(alone)}}).execute()
    card = flat("".join(o.get("text", "") for o in nb.cells[-1].outputs))
    assert "(lab 1 not started)" in card, card[-500:]
    assert list((alone / "transformer-labs").glob("**/grader.py"))
