"""Every Markdown page the repository cites exists in it, and every cited § is a section of that page.

A citation is a name ending in `.md` in any tracked (or new, not ignored) text file; in Python
and Snakemake files only their strings and comments count (an attribute such as `args` dot `md` is code). It
resolves against the repository root, the citing file's folder or, for a bare file name, any
file of that name. A § number right after it (also after a Markdown link's closing brackets)
must be a heading `N.` of that page. A path after a placeholder (`<out>/`, `{x}/`) is a template.
"""

import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CITE = re.compile(r"(?<![\w./>}-])([\w./-]*\w\.md)\b(?:[\])]*\s*§\s*(\d+))?")
HEADING = re.compile(r"^#{1,6}\s+(\d+)\.", re.M)
CODE = (".py", ".smk")


def listed_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, text=True)
    if out.returncode:
        pytest.skip(f"not a git checkout: {out.stderr.strip()}")
    return sorted(set(out.stdout.split()))


def pieces(path: Path, text: str):
    """(first line, text) of what a citation can sit in: the strings and comments of code,
    every line of any other file."""
    if path.suffix in CODE or path.name == "Snakefile":
        kinds = (tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", -1))
        try:
            toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
            return [(t.start[0], t.string) for t in toks if t.type in kinds]
        except (tokenize.TokenError, IndentationError, SyntaxError):
            pass
    return list(enumerate(text.splitlines(), 1))


def citations(root: Path, files: list[str]):
    """(citing file, line, cited name, section or None) for every citation."""
    for rel in files:
        path = root / rel
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary: parquet, png, safetensors
        for first, piece in pieces(path, text):
            for m in CITE.finditer(piece):
                yield rel, first + piece.count("\n", 0, m.start()), m.group(1), m.group(2)


def resolve(root: Path, files: list[str], citing: str, name: str) -> list[Path]:
    name = name.removeprefix("./")
    here = (root / citing).parent
    found = [p for p in (root / name, here / name) if p.is_file()]
    if not found and "/" not in name:
        found = [root / f for f in files if f.rsplit("/", 1)[-1] == name]
    return found


def broken_citations(root: Path) -> list[str]:
    files = listed_files(root)
    bad = []
    for rel, line, name, section in citations(root, files):
        pages = resolve(root, files, rel, name)
        if not pages:
            bad.append(f"{rel}:{line}: {name} is not in the repository")
        elif section and not any(section in HEADING.findall(p.read_text()) for p in pages):
            bad.append(f"{rel}:{line}: {name} has no section {section} (a heading '{section}.')")
    return bad


def test_every_cited_page_and_section_exists():
    assert broken_citations(ROOT) == []


SCRIPT = re.compile(r"(?<![\w./-])((?:benchmarks|experiments)/[\w./-]*\w\.(?:py|sh|json))\b")


def broken_script_paths(root: Path) -> list[str]:
    """Cited benchmarks/ and experiments/ scripts that are not there, and cited results JSON that is
    neither there nor named by a script of its folder (an output not committed, e.g. gpu_check.json)."""
    files = listed_files(root)
    bad = []
    for rel in files:
        path = root / rel
        try:
            text = path.read_text() if path.is_file() else ""
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for cited in SCRIPT.findall(line):
                if (root / cited).is_file():
                    continue
                folder, name = cited.split("/", 1)[0], cited.rsplit("/", 1)[-1]
                made = cited.endswith(".json") and any(
                    name in (root / f).read_text() for f in files
                    if f.startswith(folder + "/") and f.endswith((".py", ".sh")) and (root / f).is_file())
                if not made:
                    bad.append(f"{rel}:{n}: {cited} is not in the repository")
    return bad


def test_every_cited_script_and_result_exists():
    """benchmarks/: speed and memory; experiments/: the science. A script cited under the other
    folder's name (after a move) is reported."""
    assert broken_script_paths(ROOT) == []


def test_misplaced_script_is_reported(tmp_path):
    b, e = "benchmarks", "experiments"  # no literal paths in this file: the test above scans it too
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    for d in (b, e):
        (tmp_path / d / "results").mkdir(parents=True)
    (tmp_path / e / "a.py").write_text(f'"""Writes {e}/results/a.json."""\n')
    (tmp_path / b / "b.py").write_text(f'"""Writes {b}/results/b_gpu.json."""\n')
    (tmp_path / b / "results" / "b.json").write_text("{}\n")
    (tmp_path / "README.md").write_text(f"python {b}/a.py -> {b}/results/a.json\n"
                                        f"{e}/a.py {e}/results/a.json {b}/b.py\n"
                                        f"{b}/results/b.json {b}/results/b_gpu.json run/{b}/a.py\n")
    assert broken_script_paths(tmp_path) == [
        f"README.md:1: {b}/a.py is not in the repository",
        f"README.md:1: {b}/results/a.json is not in the repository",
    ]


def test_design_pages_have_the_cited_sections():
    # the sections the code cites (docs/method.md §1-§4 among them) are these pages' headings
    sections = {p: HEADING.findall((ROOT / "docs" / p).read_text()) for p in ("method.md", "world.md",
                                                                             "architecture.md")}
    assert sections["method.md"][:4] == ["1", "2", "3", "4"]
    assert sections["world.md"][:6] == ["1", "2", "3", "4", "5", "6"]
    assert sections["architecture.md"][:4] == ["1", "2", "3", "4"]


def test_missing_page_and_section_are_reported(tmp_path):
    md = ".md"  # no literal citations in this file: the first test scans it too
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / f"page{md}").write_text("# Page\n\n## 1. One\n\ntext\n")
    (tmp_path / "a.py").write_text(f'"""See docs/page{md} §1\nand docs/page{md} §2."""\n'
                                   f'x = args{md}  # DESIGN{md} §1\n')
    (tmp_path / "docs" / f"b{md}").write_text(f"[page{md}](page{md}) §1, [page{md} §3](page{md}), design/GONE{md}\n")
    assert broken_citations(tmp_path) == [
        f"a.py:2: docs/page{md} has no section 2 (a heading '2.')",
        f"a.py:3: DESIGN{md} is not in the repository",
        f"docs/b{md}:1: page{md} has no section 3 (a heading '3.')",
        f"docs/b{md}:1: design/GONE{md} is not in the repository",
    ]


def test_method_page_keys_and_values_are_the_schema_s():
    """docs/method.md §5: every key is a config key, and an enumerated key lists exactly the schema's values."""
    import yaml

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    page = (ROOT / "docs" / "method.md").read_text()
    table = page[page.index("## 5."):]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == ["choice", "key", "default", "values"] and len(rows) > 10
    for choice, key, default, values in rows[1:]:
        node = schema
        for part in key.strip("`").split("."):
            assert part in node.get("properties", {}), f"docs/method.md §5: {key} is not a config key"
            node = node["properties"][part]
        if "enum" in node:
            assert re.findall(r"`([^`]+)`", values) == node["enum"], key
            assert re.findall(r"`([^`]+)`", default)[0] in node["enum"], key
