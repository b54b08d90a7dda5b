"""The notebooks: generated from the lab files, run end to end in a real Jupyter kernel (nbclient) as shipped (every
lab "not started") and with the reference solutions in their cells (every lab passes), and a cell as shipped never
overwrites work done in a terminal."""
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def texts(nb) -> list:
    """The code cells' outputs as text, an error shown by a cell (even one a magic ran) as "ERROR name: value"."""
    return ["".join(o.get("text", "") if o.output_type != "error" else f"ERROR {o.ename}: {o.evalue}\n"
                    for o in c.outputs) for c in nb.cells if c.cell_type == "code"]


def execute(nb, folder):
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    return texts(nb)


def run(folder, lab) -> list:
    """Execute a notebook of `folder`'s notebooks/ in a fresh kernel; its code cells' text outputs."""
    path = folder / "notebooks" / NOTEBOOKS[lab]
    return execute(nbformat.read(path, as_version=4), path.parent)


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
    base = tmp_path_factory.mktemp("filled")
    write_release(base / "pack")
    for name, text in expected_notebooks(filled=True).items():
        (base / "pack" / "notebooks" / name).write_text(text)
    for name in LAB_FILES.values():
        shutil.copyfile(ROOT / "solutions" / name, base / "pack" / "labs" / name)

    def one(lab):  # a copy per lab: two kernels at once never see each other's lab files
        folder = shutil.copytree(base / "pack", base / lab / "pack")
        (folder / "labs" / LAB_FILES[lab]).write_text(expected_stubs()[LAB_FILES[lab]])
        return run(folder, lab)
    with ThreadPoolExecutor(2) as pool:
        return base, dict(zip(NOTEBOOKS, pool.map(one, NOTEBOOKS)))


@pytest.mark.parametrize("lab", list(NOTEBOOKS))
def test_a_shipped_notebook_runs_and_grades_not_started(lab, shipped):
    folder, outputs = shipped
    card = flat(outputs[lab][-1])
    assert "not started" in card and f"(lab {lab[3]} not started)" in card, card[-600:]
    everything = " ".join(outputs[lab])
    assert "ERROR" not in everything and "Traceback" not in everything, everything[-1500:]
    assert "not written yet" in everything  # the try cell reached the lab's own TODOs, the earlier labs' stand-ins
    for name in LAB_FILES:  # beneath it (lab 2's module-level `mha` no longer stops labs 3 to 6 at their imports)
        if name < lab and name != "lab4":
            assert f"runs the pack's lab {name[3]} in its place" in outputs[lab][0], outputs[lab][0]
    if lab in ("lab5", "lab6"):  # the release has no lab 4 stand-in: the cells that need it say what to do first
        assert "labs/lab4_gpt.py has a TODO left" in everything and "finish lab 4 first" in everything
    assert (folder / "labs" / LAB_FILES[lab]).read_text() == expected_stubs()[LAB_FILES[lab]]  # nothing was saved


@pytest.mark.parametrize("lab", list(NOTEBOOKS))
def test_a_filled_notebook_saves_its_cells_and_passes(lab, filled):
    folder, outputs = filled
    card = flat(outputs[lab][-1])
    assert f"(lab {lab[3]} passed)" in card, card[-800:]
    assert "Traceback" not in "".join(outputs[lab]) and "ERROR" not in "".join(outputs[lab])
    assert "in its place" not in outputs[lab][0]  # the earlier labs are finished: the kernel runs the student's own
    assert "# TODO" not in (folder / lab / "pack" / "labs" / LAB_FILES[lab]).read_text()


def test_the_try_cells_show_the_students_code_at_work(filled):
    _, outputs = filled
    text = " ".join(" ".join(o) for o in outputs.values())
    assert "row sums" in text and "-> output (2, 6, 16)" in text and "same tokens: True" in text
    assert "greedy sample: 'hello transformer!" in text


@pytest.fixture(scope="module")
def own_cells_only(tmp_path_factory):
    """The release as shipped (every lab file a stub) with labs 3 and 4's notebooks filled in: a student who starts
    with lab 3 or 4 before the labs beneath it are written."""
    folder = tmp_path_factory.mktemp("own") / "pack"
    write_release(folder)
    for lab in ("lab3", "lab4"):
        (folder / "notebooks" / NOTEBOOKS[lab]).write_text(expected_notebooks(filled=True)[NOTEBOOKS[lab]])
    with ThreadPoolExecutor(2) as pool:
        return folder, dict(zip(("lab3", "lab4"), pool.map(lambda lab: run(folder, lab), ("lab3", "lab4"))))


@pytest.mark.parametrize("lab", ["lab3", "lab4"])
def test_a_notebook_runs_on_its_own_cells_while_the_earlier_labs_are_stubs(lab, own_cells_only):
    folder, outputs = own_cells_only
    everything = " ".join(outputs[lab])
    assert "ERROR" not in everything and "Traceback" not in everything and "not written yet" not in everything, \
        everything[-2000:]
    assert f"(lab {lab[3]} passed)" in flat(outputs[lab][-1]), flat(outputs[lab][-1])[-800:]
    assert {"lab3": "TransformerBlock: input (2, 6, 16) -> output (2, 6, 16)",
            "lab4": "greedy sample: 'hello transformer!"}[lab] in everything, everything[-1500:]
    assert "lab 2 in its place" in outputs[lab][0] and "# TODO" not in (folder / "labs" / LAB_FILES[lab]).read_text()
    assert "# TODO" in (folder / "labs" / LAB_FILES["lab2"]).read_text()  # nothing but the lab's own file was written


def test_an_earlier_lab_that_does_not_run_is_replaced_and_the_reason_given(tmp_path):
    """Finished but broken earlier labs: one does not parse, one raises when imported; with no stand-in (lab 4 left
    out of the release), a placeholder whose names raise EarlierLab, class bodies and subclasses included."""
    folder = tmp_path / "pack"
    write_release(folder)
    labs = folder / "labs"
    (labs / LAB_FILES["lab1"]).write_text((ROOT / "solutions" / LAB_FILES["lab1"]).read_text() + "\ndef oops(:\n")
    (labs / LAB_FILES["lab2"]).write_text((ROOT / "solutions" / LAB_FILES["lab2"]).read_text() + "\nraise ValueError('boom')\n")
    (labs / LAB_FILES["lab3"]).write_text((ROOT / "solutions" / LAB_FILES["lab3"]).read_text())
    script = (
        "import sys\nsys.path.insert(0, '.')\nfrom worker import notebook\nnotebook.setup('lab5', '.')\n"
        "import lab3_block, lab4_gpt\nprint('lab3 from', lab3_block.__file__)\n"
        "from lab4_gpt import TinyGPT\n"
        "class Llama(TinyGPT):\n    generate = TinyGPT.generate\n    def __init__(self):\n        super().__init__(5)\n"
        "try:\n    Llama()\nexcept notebook.EarlierLab as exc:\n    print('refused:', exc)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert f"labs/{LAB_FILES['lab1']} has a syntax error (line" in out and "runs the pack's lab 1 in its place" in out
    assert f"labs/{LAB_FILES['lab2']} raises ValueError when run (boom)" in out and "pack's lab 2 in its place" in out
    assert f"lab3 from {labs / LAB_FILES['lab3']}".replace(str(folder) + "/", "") in out.replace(str(folder) + "/", "")
    assert "finish lab 4 first to try your code here" in out
    assert "refused: finish lab 4 first: labs/lab4_gpt.py has a TODO left (line" in out, out


def cell(kind: str, text: str) -> dict:
    return nbformat.v4.new_code_cell(text) if kind == "code" else nbformat.v4.new_markdown_cell(text)


def test_an_earlier_lab_edited_while_the_kernel_runs_is_loaded_again(tmp_path):
    """Lab 3's kernel starts on the stand-ins; lab 2 and then lab 1 are finished in a terminal (or another notebook);
    the next cell runs the student's own, with the notebook's imported names re-bound and a stale subclass named."""
    folder = tmp_path / "pack"
    write_release(folder)
    shipped = nbformat.reads(expected_notebooks()[NOTEBOOKS["lab3"]], as_version=4)
    solved = {name: (ROOT / "solutions" / LAB_FILES[name]).read_text() for name in ("lab1", "lab2")}
    which = "%%try\nimport sys\nprint('uses', MultiHeadAttention.__module__, sys.modules['lab2_multihead'].__file__)"
    nb = nbformat.v4.new_notebook(cells=[shipped.cells[1], shipped.cells[2], cell("code", which),
                                         cell("code", "class Mine(MultiHeadAttention):\n    pass"),
                                         cell("code", f"open('../labs/{LAB_FILES['lab2']}', 'w').write({solved['lab2']!r})"),
                                         cell("code", which),
                                         cell("code", f"open('../labs/{LAB_FILES['lab1']}', 'w').write({solved['lab1']!r})"),
                                         cell("code", which + "\nprint(Mine.__mro__[1] is MultiHeadAttention)")])
    nb.metadata = shipped.metadata
    (folder / "notebooks" / "edit.ipynb").write_text(nbformat.writes(nb))
    out = execute(nb, folder / "notebooks")
    assert "runs the pack's lab 2 in its place" in out[0] and "worker/standins/lab2_multihead.py" in out[2], out
    assert f"labs/{LAB_FILES['lab2']} changed: loaded it again." in out[5], out[5]
    assert "lab2_multihead" in out[5] and f"labs/{LAB_FILES['lab2']}" in out[5].splitlines()[-1], out[5]
    assert "run the cell that defines Mine again: it is built on the old MultiHeadAttention." in out[5], out[5]
    # lab 1 changed: it is loaded again, and lab 2 after it (it imports lab 1), so lab 2's class is new again
    assert f"labs/{LAB_FILES['lab1']} changed: loaded it again." in out[7] and "False" in out[7], out[7]
    assert f"labs/{LAB_FILES['lab2']} changed" in out[7] and "ERROR" not in " ".join(out), out


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


def published(tmp_path, name="release") -> tuple:
    """tools/release.py OUT --pack-url file://OUT.zip: (the release folder, the zip, its URL)."""
    from tools.release import main as release
    out, archive = tmp_path / name, tmp_path / f"{name}.zip"
    assert release([str(out), "--pack-url", f"file://{archive}"]) == 0
    return out, archive, f"file://{archive}"


def test_a_notebook_opened_alone_fetches_the_pack_from_its_url(tmp_path):
    """Colab's case: no pack around the notebook; the setup cell unpacks the release zip from PACK_URL (a file:// URL
    here) once its SHA-256 matches the one baked in, installs what is missing (nothing, here) and grades."""
    out, archive, url = published(tmp_path)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(out / "notebooks" / NOTEBOOKS["lab1"], alone / NOTEBOOKS["lab1"])
    nb = nbformat.read(alone / NOTEBOOKS["lab1"], as_version=4)
    assert hashlib.sha256(archive.read_bytes()).hexdigest() in nb.cells[1].source and url in nb.cells[1].source
    card = flat(execute(nb, alone)[-1])
    assert "(lab 1 not started)" in card, card[-500:]
    assert (alone / "transformer-labs" / "pack" / "grader.py").is_file()


def setup_cell(notebook_path: Path, where: Path) -> subprocess.CompletedProcess:
    """Run a notebook's setup cell (its first code cell) as a script in `where`, as Colab would run it first."""
    nb = nbformat.read(notebook_path, as_version=4)
    script = where / "setup_cell.py"
    script.write_text(next(c.source for c in nb.cells if c.cell_type == "code"))
    return subprocess.run([sys.executable, str(script)], cwd=where, capture_output=True, text=True, timeout=300)


def test_the_setup_cell_refuses_a_zip_whose_checksum_differs(tmp_path):
    out, archive, _ = published(tmp_path)
    with zipfile.ZipFile(archive, "a") as z:  # the zip at the URL is no longer the one the notebook was made for
        z.writestr("transformer-labs/labs/extra.py", "print('not from the course')\n")
    alone = tmp_path / "alone"
    alone.mkdir()
    proc = setup_cell(out / "notebooks" / NOTEBOOKS["lab2"], alone)
    assert proc.returncode != 0 and "its SHA-256 differs" in proc.stderr, proc.stderr[-800:]
    assert "Traceback" not in proc.stderr and not (alone / "transformer-labs" / "pack").exists()


def test_the_setup_cell_without_a_url_says_what_to_do(tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "lab1.ipynb").write_text(expected_notebooks()[NOTEBOOKS["lab1"]])
    proc = setup_cell(alone / "lab1.ipynb", alone)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert "open it from the pack's notebooks/ folder, or from the Colab link your course gave you" in proc.stderr


def test_the_setup_cell_refreshes_a_stale_copy_and_keeps_the_students_work(tmp_path):
    """The instructor republishes at the same URL: a notebook of the new release finds the copy unpacked from the old
    zip, unpacks the new one, and keeps every lab file the student changed (and the .bak beside it)."""
    old, archive, _ = published(tmp_path, "old")
    alone = tmp_path / "alone"
    alone.mkdir()
    assert setup_cell(old / "notebooks" / NOTEBOOKS["lab1"], alone).returncode == 0
    labs = alone / "transformer-labs" / "pack" / "labs"
    mine = (ROOT / "solutions" / LAB_FILES["lab1"]).read_text()
    (labs / LAB_FILES["lab1"]).write_text(mine)
    (labs / f".{LAB_FILES['lab1']}.bak").write_text("the version before\n")
    again = setup_cell(old / "notebooks" / NOTEBOOKS["lab1"], alone)  # the same zip: nothing is fetched again
    assert again.returncode == 0 and (labs / LAB_FILES["lab1"]).read_text() == mine
    (labs.parent / "marker").write_text("from the old copy")  # anything of the old copy that is not a lab file goes
    new = tmp_path / "new"
    shutil.copytree(old, new)
    (new / "labs" / LAB_FILES["lab2"]).write_text((new / "labs" / LAB_FILES["lab2"]).read_text() + "# republished\n")
    from tools.release import publish
    sha = publish(new, f"file://{archive}", archive)  # the same URL, a new zip and notebooks that know its checksum
    refreshed = setup_cell(new / "notebooks" / NOTEBOOKS["lab1"], alone)
    assert refreshed.returncode == 0, refreshed.stderr[-800:]
    assert (labs / LAB_FILES["lab2"]).read_text().endswith("# republished\n")  # unchanged by the student: the new one
    assert (labs / LAB_FILES["lab1"]).read_text() == mine  # changed by the student: kept
    assert (labs / f".{LAB_FILES['lab1']}.bak").read_text() == "the version before\n"
    assert not (labs.parent / "marker").exists()
    assert json.loads((alone / "transformer-labs" / "unpacked.json").read_text())["sha256"] == sha


def test_a_release_zip_is_the_same_bytes_for_the_same_release(tmp_path):
    _, first, _ = published(tmp_path, "a")
    _, second, _ = published(tmp_path, "b")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as z:
        names = z.namelist()
    assert "transformer-labs/grader.py" in names and not any("__pycache__" in n or "solutions/" in n for n in names)
    inner = nbformat.reads(zipfile.ZipFile(first).read(f"transformer-labs/notebooks/{NOTEBOOKS['lab1']}"), as_version=4)
    assert "PACK_SHA256 = ''" in inner.cells[1].source  # a checksum cannot be inside what it sums
