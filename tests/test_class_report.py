"""The class report (parent/classreport.py, `grader.py report`): its numbers, read back from the page's own elements
with html.parser, on a class of 12 submissions written out here; escaping; missing and empty input; the command;
and the page as headless Chromium draws it."""
import csv
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from parent import classreport

ROOT = Path(__file__).resolve().parent.parent
GRADER = str(ROOT / "grader.py")
LABS = ("lab1", "lab2", "lab3")  # lab3: columns in the CSV, but no submission graded in it

# lab1's checks: (name, title, points, hint of its failure)
LAB1 = [("test_causal_mask", "causal mask", 2, "mask"),
        ("test_upper_triangle_is_zero", "upper triangle is zero", 2, "mask"),
        ("test_weight_rows_sum_to_one", "rows sum to one", 1, "softmax"),
        ("test_matches_oracle", "matches oracle", 5, "scale")]
LAB2 = [("test_output_shape", "output shape", 4, "heads"), ("test_causality", "causality", 4, "causal")]


def base_class() -> dict:
    """The class: {submission: {"seconds": s, lab: (status, reason, {check: outcome}) or None}}, an outcome being
    "pass", "fail" (the check's hint), "fail:KEY" (hint KEY), "fail-nohint" or "skip". Facts: lab1 scores
    0,5,5,5,6,8,8,8,9,10,10,10 (mean 7, median 8); `mask` in 4 of 12 (s01 fails two checks that name it); causal
    mask 8/12, matches oracle 8/11 (s12 skipped it), upper triangle 9/12, rows sum to one 10/12."""
    ok1 = {name: "pass" for name, *_ in LAB1}
    ok2 = {name: "pass" for name, *_ in LAB2}

    def lab1(status="failed", **fails):
        return (status, "", {**ok1, **fails})

    cls = {
        "s01": {"lab1": lab1(test_causal_mask="fail", test_upper_triangle_is_zero="fail")},
        "s02": {"lab1": lab1(test_causal_mask="fail"), "lab2": ("failed", "", {**ok2, "test_causality": "fail"})},
        "s03": {"lab1": lab1(test_upper_triangle_is_zero="fail")},
        "s04": {"lab1": lab1(test_causal_mask="fail")},
        "s05": {"lab1": lab1(test_weight_rows_sum_to_one="fail")},
        "s06": {"lab1": lab1(test_matches_oracle="fail")},
        "s07": {"lab1": lab1(test_matches_oracle="fail")},
        "s08": {"lab1": lab1("passed")},
        "s09": {"lab1": lab1("passed"), "lab2": ("forbidden", "uses scaled_dot_product_attention",
                                                 {name: "fail-nohint" for name in ok2})},
        "s10": {"lab1": lab1("passed"), "lab2": ("error", "SyntaxError: invalid syntax (line 3)", {})},
        "s11": {"lab1": lab1("timeout", test_matches_oracle="fail-nohint")},
        "s12": {"lab1": ("not started", "every check reached a TODO",
                         {**{name: "fail-nohint" for name in ok1}, "test_matches_oracle": "skip"}),
                "lab2": None},
    }
    for n, (name, sub) in enumerate(cls.items()):
        sub.setdefault("lab2", ("passed", "", dict(ok2)))
        sub["lab3"] = None
        sub["seconds"] = {"s11": 185.5, "s12": 0.25}.get(name, 1.0 + n)
    return cls


def score(lab, outcomes, status) -> int:
    if status in ("forbidden", "error", "not started"):
        return 0
    checks = LAB1 if lab == "lab1" else LAB2
    return sum(points for name, _, points, _ in checks if outcomes.get(name) == "pass")


def write_class(folder: Path, cls: dict, with_json=True, stem="grades") -> Path:
    """grades.csv (and grades.checks.json) for `cls`, in the batch's format."""
    folder.mkdir(parents=True, exist_ok=True)
    header = ["submission", "id", "name", "email", "total", "max_total"]
    header += [f"{lab}_{what}" for lab in LABS for what in ("score", "max", "status", "reason")]
    header += ["seconds", "grader_version", "graded_at"]
    rows, subs = [], {}
    for i, (name, sub) in enumerate(cls.items()):
        row = {"submission": name, "id": str(1000 + i), "name": f"Student {i}", "email": f"s{i}@example.edu",
               "seconds": sub["seconds"], "grader_version": "2026.12.0",
               "graded_at": "2026-12-01T10:00:00Z" if i < 6 else "2026-12-01T10:05:00Z"}
        total = of = 0
        for lab in LABS:
            graded = sub[lab]
            if graded is None:
                continue
            status, reason, outcomes = graded
            checks = LAB1 if lab == "lab1" else LAB2
            points = score(lab, outcomes, status)
            top = sum(p for _, _, p, _ in checks)
            row.update({f"{lab}_score": points, f"{lab}_max": top, f"{lab}_status": status, f"{lab}_reason": reason})
            total, of = total + points, of + top
            subs.setdefault(name, {})[lab] = {
                "status": status, "score": points, "max_score": top, "seconds": sub["seconds"] / 2, "detail": reason,
                "checks": [{"name": check, "title": title, "passed": outcomes[check] == "pass",
                            "score": points if outcomes[check] == "pass" else 0, "points": points,
                            "hint": hint if outcomes[check] == "fail" else outcomes[check][5:]
                            if outcomes[check].startswith("fail:") else None, "hidden": False,
                            "skipped": outcomes[check] == "skip"} for check, title, points, hint in checks
                           if check in outcomes]}
        row.update(total=total, max_total=of)
        rows.append(row)
    path = folder / f"{stem}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerows(rows)
    if with_json:
        path.with_suffix(".checks.json").write_text(json.dumps(
            {"format": 1, "grader_version": "2026.12.0", "submissions": subs}))
    return path


# --- reading the page back ------------------------------------------------------------------------------------

VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "wbr", "source", "track", "embed"}


class Node:
    def __init__(self, tag, attrs):
        self.tag, self.attrs, self.children = tag, dict(attrs), []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def all(self, tag=None, **attrs):
        attrs = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [n for n in self.iter() if (tag is None or n.tag == tag)
                and all(n.attrs.get(k) == v or (k == "class" and v in (n.attrs.get(k) or "").split())
                        for k, v in attrs.items())]

    def one(self, tag=None, **attrs):
        found = self.all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


class Tree(HTMLParser):
    def __init__(self):
        super().__init__()
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs)
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, attrs))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(text: str) -> Node:
    tree = Tree()
    tree.feed(text)
    tree.close()
    return tree.root


def page(path) -> Node:
    return parse(Path(path).read_text(encoding="utf-8"))


def report(tmp_path, cls=None, **kw) -> Node:
    csv_path = write_class(tmp_path, base_class() if cls is None else cls, **kw)
    out = classreport.write_report(csv_path)
    assert out == tmp_path / "grades.report.html"
    return page(out)


def section(doc, lab) -> Node:
    return doc.one("section", data_lab=lab)


def bars(doc, lab) -> list:
    """[(score, count, height)] of a lab's histogram, from its <rect class="bar"> elements."""
    svg = section(doc, lab).one("svg", **{"class": "histogram"})
    return [(float(r.attrs["data-low"]), int(r.attrs["data-count"]), float(r.attrs["height"]))
            for r in svg.all("rect", **{"class": "bar"})]


def check_rate(doc, lab, name) -> tuple:
    """(passed, graded, the row's visible "p / g" and percentage) of one check."""
    row = section(doc, lab).one("tr", data_check=name)
    cells = [td.text().strip() for td in row.all("td")]
    return int(row.attrs["data-passed"]), int(row.attrs["data-graded"]), cells[1], cells[2]


def check_order(doc, lab) -> list:
    return [row.attrs["data-check"] for row in section(doc, lab).one("table", **{"class": "checks"}).all("tr")
            if "data-check" in row.attrs]


def mistakes(doc, lab) -> dict:
    """{hint: (count, visible count, visible percentage, hint text)} of a lab, in the page's order."""
    table = section(doc, lab).one("table", **{"class": "hints"})
    out = {}
    for row in table.all("tr"):
        if "data-hint" in row.attrs:
            cells = [td.text().strip() for td in row.all("td")]
            assert cells[0] == row.attrs["data-hint"]
            out[row.attrs["data-hint"]] = (int(row.attrs["data-count"]), int(cells[1]), cells[2], cells[3])
    return out


def statuses(doc, lab) -> dict:
    table = section(doc, lab).one("table", **{"class": "statuses"})
    return {row.attrs["data-status"]: int(row.all("td")[1].text())
            for row in table.all("tr") if "data-status" in row.attrs}


def stat(doc, lab, what) -> str:
    return section(doc, lab).one("td", data_stat=what).text()


# --- the numbers ----------------------------------------------------------------------------------------------


def test_the_numbers_of_a_class(tmp_path):
    doc = report(tmp_path)
    assert doc.one(id="submissions").text() == "12" and doc.one(id="source").text() == "grades.csv"
    assert doc.one(id="version").text() == "2026.12.0"
    assert doc.one(id="graded-at").text() == "2026-12-01T10:00:00Z to 2026-12-01T10:05:00Z"
    assert "lab1 (Scaled dot-product attention)" in doc.one(id="labs").text()

    hist = bars(doc, "lab1")  # one bar per score 0..10, heights in proportion to the counts
    assert [s for s, _, _ in hist] == list(range(11))
    counts = {s: c for s, c, _ in hist}
    assert counts == {0: 1, 1: 0, 2: 0, 3: 0, 4: 0, 5: 3, 6: 1, 7: 0, 8: 3, 9: 1, 10: 3}
    tallest = max(h for _, _, h in hist)
    assert tallest > 100 and all(abs(h - c / 3 * tallest) < 0.02 for _, c, h in hist)
    axis = section(doc, "lab1").one("line", **{"class": "y-axis"})  # the tallest bar spans the axis, all stand on it
    top, base = float(axis.attrs["y1"]), float(axis.attrs["y2"])
    assert abs(tallest - (base - top)) < 0.02
    assert all(abs(float(r.attrs["y"]) + float(r.attrs["height"]) - base) < 0.02
               for r in section(doc, "lab1").all("rect", **{"class": "bar"}))
    assert (stat(doc, "lab1", "mean"), stat(doc, "lab1", "median"), stat(doc, "lab1", "max")) == ("7", "8", "10")
    assert statuses(doc, "lab1") == {"passed": 3, "failed": 7, "timeout": 1, "not started": 1}
    assert statuses(doc, "lab2") == {"passed": 8, "failed": 1, "error": 1, "forbidden": 1, "not graded": 1}

    assert check_rate(doc, "lab1", "test_causal_mask") == (8, 12, "8 / 12", "67%")
    assert check_rate(doc, "lab1", "test_matches_oracle") == (8, 11, "8 / 11", "73%")  # s12 skipped it
    assert check_order(doc, "lab1") == ["test_causal_mask", "test_matches_oracle", "test_upper_triangle_is_zero",
                                        "test_weight_rows_sum_to_one"]  # lowest pass rate first
    assert check_rate(doc, "lab2", "test_causality") == (8, 10, "8 / 10", "80%")  # s10's lab2 has no checks

    found = mistakes(doc, "lab1")
    assert list(found) == ["mask", "scale", "softmax"]  # most common first
    assert found["mask"][:3] == (4, 4, "33%") and found["scale"][:3] == (2, 2, "17%")
    from pack.hints import hint_text
    assert found["mask"][3] == hint_text("mask") and "masked_fill" in found["mask"][3]
    assert mistakes(doc, "lab2") == {"causal": (1, 1, "9%", hint_text("causal"))}  # 1 of the 11 graded in lab2

    # lab3: columns but no scores and no checks: sentences, not figures
    lab3 = section(doc, "lab3")
    assert not lab3.all("svg") and "No scores for lab 3" in lab3.text()
    assert "No per-check results for lab 3" in lab3.text()

    slow = [(r.attrs["data-submission"], r.attrs["data-seconds"])
            for r in doc.one("table", **{"class": "slowest"}).all("tr") if "data-submission" in r.attrs]
    assert len(slow) == 10 and slow[0] == ("s11", "185.50") and slow[1] == ("s10", "10.00")
    assert "s12" not in dict(slow) and "s01" not in dict(slow)
    assert "lab1 timeout, lab2 passed, lab3 not graded" in doc.one("tr", data_submission="s11").text()
    reasons = section(doc, "lab2").one("table", **{"class": "reasons"}).text()
    assert "uses scaled_dot_product_attention" in reasons and "SyntaxError" in reasons

    # the page loads nothing: no script, no stylesheet or image link, no address
    assert not doc.all("script") and not doc.all("link") and not doc.all("img")
    text = (tmp_path / "grades.report.html").read_text()
    assert "http" not in text and "src=" not in text and "url(" not in text


def test_each_number_can_fail(tmp_path):
    """The same readings on a class that differs by one fact give other numbers: s08 also fails the causal mask
    (one more `mask`, one passed fewer, a score moved from 10 to 8), s10 gets the SyntaxError in lab1 too."""
    cls = base_class()
    cls["s08"]["lab1"] = ("failed", "", {**cls["s08"]["lab1"][2], "test_causal_mask": "fail"})
    doc = report(tmp_path, cls)
    assert mistakes(doc, "lab1")["mask"][:3] == (5, 5, "42%")
    assert check_rate(doc, "lab1", "test_causal_mask") == (7, 12, "7 / 12", "58%")
    counts = {s: c for s, c, _ in bars(doc, "lab1")}
    assert counts[10] == 2 and counts[8] == 4
    tallest = max(h for _, _, h in bars(doc, "lab1"))
    assert abs(dict((s, h) for s, _, h in bars(doc, "lab1"))[10] - tallest / 2) < 0.02  # no longer full height
    assert stat(doc, "lab1", "mean") != "7" and statuses(doc, "lab1")["failed"] == 8

    cls = base_class()
    cls["s06"]["lab1"] = ("failed", "", {**cls["s06"]["lab1"][2], "test_weight_rows_sum_to_one": "pass"})
    cls["s06"]["lab1"][2]["test_matches_oracle"] = "pass"
    cls["s09"]["lab1"][2]["test_upper_triangle_is_zero"] = "fail"
    doc = report(tmp_path / "other", cls)
    assert check_order(doc, "lab1")[:2] == ["test_causal_mask", "test_upper_triangle_is_zero"]  # 8/12 each now


def test_one_bug_counts_once(tmp_path):
    """A submission whose three failed checks all name `mask` counts 1; the same three failures in three
    submissions count 3 (the variant that shows the reading can fail)."""
    ok = {name: "pass" for name, *_ in LAB1}
    fails = {"test_causal_mask": "fail", "test_upper_triangle_is_zero": "fail",
             "test_weight_rows_sum_to_one": "fail:mask"}
    one = {"solo": {"lab1": ("failed", "", {**ok, **fails}), "lab2": None, "lab3": None, "seconds": 1.0},
           "fine": {"lab1": ("passed", "", dict(ok)), "lab2": None, "lab3": None, "seconds": 1.0}}
    doc = report(tmp_path / "one", one)
    three = {f"s{i}": {"lab1": ("failed", "", {**ok, check: outcome}), "lab2": None, "lab3": None, "seconds": 1.0}
             for i, (check, outcome) in enumerate(fails.items())}
    spread = report(tmp_path / "three", three)
    assert mistakes(doc, "lab1")["mask"][:3] == (1, 1, "50%")
    assert mistakes(spread, "lab1")["mask"][:3] == (3, 3, "100%")


HOSTILE = "<script>alert(1)</script>"


def test_submission_text_is_escaped(tmp_path):
    cls = base_class()
    cls[HOSTILE] = cls.pop("s11")  # the slowest: it shows in the slowest table
    cls['x" onmouseover="alert(2)'] = cls.pop("s10")
    cls["s09"]["lab2"] = ("forbidden", "<img src=x onerror=alert(3)>", cls["s09"]["lab2"][2])
    csv_path = write_class(tmp_path, cls)
    doc = page(classreport.write_report(csv_path))
    assert not doc.all("script") and not doc.all("img")
    assert not [n for n in doc.iter() if any(k.startswith("on") for k in n.attrs)]
    cells = [td.text() for td in doc.one("table", **{"class": "slowest"}).all("td")]
    assert HOSTILE in cells and 'x" onmouseover="alert(2)' in cells  # shown as text
    assert doc.one("tr", data_submission=HOSTILE)
    assert "<img src=x onerror=alert(3)>" in section(doc, "lab2").one("table", **{"class": "reasons"}).text()


def test_the_escaping_reading_can_fail():
    """The same readings see a script, an image and an event handler in a page that does not escape."""
    doc = parse(f"<table><tr><td>{HOSTILE}</td><td x=\"\" onmouseover=\"alert(2)\"><img src=x></td></tr></table>")
    assert doc.all("script") and doc.all("img")
    assert [n for n in doc.iter() if any(k.startswith("on") for k in n.attrs)]


def test_spreadsheet_guard_and_control_characters(tmp_path):
    cls = base_class()
    cls["'=HYPERLINK(1)"] = cls.pop("s11")  # as the batch writes "=HYPERLINK(1)"
    cls["'quoted"] = cls.pop("s10")  # an apostrophe of its own stays
    cls["bell\x07\u202eevil"] = cls.pop("s09")
    doc = page(classreport.write_report(write_class(tmp_path, cls)))
    names = [r.attrs["data-submission"] for r in doc.all("tr") if "data-submission" in r.attrs]
    assert names[:3] == ["=HYPERLINK(1)", "'quoted", "bell\\x07\\u202eevil"]
    assert classreport.unguard("'-3") == "-3" and classreport.unguard("'x") == "'x" and classreport.number("'-3") == -3


def test_without_checks_json(tmp_path):
    doc = report(tmp_path, with_json=False)
    assert "Per-check data is unavailable" in doc.one(id="no-checks").text()
    assert [c for _, c, _ in bars(doc, "lab1")] == [1, 0, 0, 0, 0, 3, 1, 0, 3, 1, 3]  # still from the CSV
    assert statuses(doc, "lab1")["failed"] == 7
    assert len([r for r in doc.all("tr") if "data-submission" in r.attrs]) == 10
    assert not doc.all("table", **{"class": "checks"}) and not doc.all("table", **{"class": "hints"})


@pytest.mark.parametrize("content", [
    "not json at all",
    '{"submissions": []}',
    "[" * 100_000,
    json.dumps({"submissions": {"s01": "x", "s02": {"lab1": {"checks": "x"}, "lab9": {}},
                                "s03": {"lab1": {"checks": [1, None, {"name": 3, "passed": True},
                                                            {"name": "test_causal_mask", "passed": "no"},
                                                            {"name": "test_causal_mask", "passed": False, "hint": 7,
                                                             "title": ["x"]}],
                                                 "seconds": "slow"}}}}),
])
def test_a_malformed_checks_json_is_survived(tmp_path, content):
    csv_path = write_class(tmp_path, base_class(), with_json=False)
    csv_path.with_suffix(".checks.json").write_text(content)
    doc = page(classreport.write_report(csv_path))
    assert doc.one(id="submissions").text() == "12"
    if "s03" in content:  # the one well-formed check survives, its bad hint and title dropped
        assert check_rate(doc, "lab1", "test_causal_mask") == (0, 1, "0 / 1", "0%")
        assert "No diagnosed mistakes in lab 1" in section(doc, "lab1").text()
    else:
        assert "Per-check data is unavailable" in doc.one(id="no-checks").text()


def test_empty_csv(tmp_path):
    csv_path = write_class(tmp_path, {}, with_json=False)
    csv_path.with_suffix(".checks.json").write_text(json.dumps({"format": 1, "submissions": {}}))
    doc = page(classreport.write_report(csv_path))
    assert doc.one(id="submissions").text() == "0"
    assert "No submissions in grades.csv" in doc.one(id="no-submissions").text()
    assert not doc.all("svg") and not doc.all("section")


def test_bad_input_gives_none_and_a_reason(tmp_path, capsys, monkeypatch):
    assert classreport.write_report(tmp_path / "nothing.csv") is None
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert classreport.write_report(tmp_path / "other.csv") is None
    assert "not a grades CSV" in capsys.readouterr().err
    csv_path = write_class(tmp_path, base_class())
    monkeypatch.setattr(classreport, "MAX_BYTES", 100)
    assert classreport.write_report(csv_path) is None
    assert "MB this report reads" in capsys.readouterr().err
    monkeypatch.setattr(classreport, "MAX_BYTES", csv_path.stat().st_size)  # the CSV fits, its JSON does not
    assert "is unavailable: checks JSON" in page(classreport.write_report(csv_path)).one(id="no-checks").text()
    monkeypatch.setattr(classreport, "render", lambda *a: 1 / 0)
    assert classreport.write_report(csv_path) is None and "internal error: ZeroDivisionError" in capsys.readouterr().err


# --- grader.py report -----------------------------------------------------------------------------------------


def grader(*args):
    return subprocess.run([sys.executable, GRADER, "report", *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_the_command(tmp_path):
    csv_path = write_class(tmp_path, base_class())
    proc = grader(csv_path, "--html", tmp_path / "out" / "report.html")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot write" in proc.stderr, proc.stderr
    (tmp_path / "out").mkdir()
    proc = grader(csv_path, "--html", tmp_path / "out" / "report.html")
    assert proc.returncode == 0, proc.stderr
    assert page(tmp_path / "out" / "report.html").one(id="submissions").text() == "12"
    assert not (tmp_path / "grades.report.html").exists()
    proc = grader(csv_path)  # the default: beside the CSV
    assert proc.returncode == 0 and (tmp_path / "grades.report.html").is_file(), proc.stderr
    proc = grader(tmp_path / "missing.csv")
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"grader.py report: error: CSV {tmp_path / 'missing.csv'}: no such file"]
    proc = grader(csv_path, "--html", csv_path)
    assert proc.returncode == 2 and "is the CSV itself" in proc.stderr
    assert csv_path.read_text().startswith("submission,")  # untouched
    assert grader().returncode == 2 and grader(csv_path, "--bogus").returncode == 2


# --- the page in a browser ------------------------------------------------------------------------------------

BAR = (0x3F, 0x74, 0xB8)  # the histogram's fill (classreport.svg_histogram)


def pixels(png: bytes):
    """(width, height, rows of bytes, bytes per pixel) of an 8-bit RGB or RGBA PNG, decoded here."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(b"".join(idat)), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif kind == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif kind == 4:
            for i in range(stride):
                a, b, c = (line[i - bpp], prev[i], prev[i - bpp]) if i >= bpp else (0, prev[i], 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows, bpp


def drawn(png: bytes) -> dict:
    """What a screenshot shows: its distinct colours, its share of non-white pixels, its pixels of the bars' colour."""
    width, height, rows, bpp = pixels(png)
    colours, white, bar = set(), 0, 0
    for line in rows:
        for x in range(0, width * bpp, bpp):
            px = line[x:x + 3]
            colours.add(px)
            white += px == b"\xff\xff\xff"
            bar += px == bytes(BAR)
    return {"colours": len(colours), "ink": 1 - white / (width * height), "bar": bar}


def not_blank(seen: dict) -> bool:
    return seen["colours"] > 20 and seen["ink"] > 0.01 and seen["bar"] > 1000


def screenshot(browser, page_path: Path, tmp_path: Path) -> bytes:
    out = tmp_path / f"{page_path.stem}.png"
    proc = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={out}",
                           "--window-size=1200,1600", page_path.resolve().as_uri()],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-2000:]
    return out.read_bytes()


def test_chromium_draws_the_page(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install chromium)")
    out = classreport.write_report(write_class(tmp_path, base_class()))
    png = screenshot(browser, out, tmp_path)
    assert len(png) < 1_000_000
    seen = drawn(png)
    assert not_blank(seen), seen
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body></body></html>")
    empty = drawn(screenshot(browser, blank, tmp_path))
    assert not not_blank(empty) and empty["colours"] == 1 and empty["bar"] == 0, empty


def test_a_lab_without_checks(tmp_path):
    """Every lab2 entry of the JSON has an empty list of checks: sentences where the table and the mistakes were."""
    cls = base_class()
    for sub in cls.values():
        if sub["lab2"]:
            sub["lab2"] = (sub["lab2"][0], sub["lab2"][1], {})
    lab2 = section(report(tmp_path, cls), "lab2")
    assert "No per-check results for lab 2" in lab2.text() and "No diagnosed mistakes in lab 2" in lab2.text()
    assert not lab2.all("table", **{"class": "checks"}) and lab2.all("svg", **{"class": "histogram"})
