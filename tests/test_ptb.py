"""dowser.ptb: pycocoevalcap's PTB tokenization, Java and the Python port."""

import json
from pathlib import Path

import pytest

from dowser import metrics, ptb

CORPUS = json.loads((Path(__file__).parent / "data" / "ptb_captions.json").read_text())
needs_java = pytest.mark.skipif(not ptb.java_available(), reason="needs java + pycocoevalcap's jar")

# Issue 9's example: pycocoevalcap + Java gives 506.6066 (brackets are kept as -lrb-/-rrb-).
REFS = {"1": ["a dog (brown) runs", "a brown dog runs"], "2": ["two cats sleep", "cats are sleeping"]}
CANDS = {"1": "a dog (brown) runs", "2": "two cats sleep"}


def test_port_reproduces_java_on_the_committed_corpus():
    port = ptb.python_lines(CORPUS["captions"])
    assert len(port) == len(CORPUS["java_tokens"]) == len(CORPUS["captions"]) >= 700
    wrong = [(c, j, p) for c, j, p in zip(CORPUS["captions"], CORPUS["java_tokens"], port) if j != p]
    assert wrong == []


def test_shortcuts_change_nothing(monkeypatch):
    """The word/space shortcuts in `lex` against the full rule set alone."""
    fast = ptb.python_lines(CORPUS["captions"][:300])
    monkeypatch.setattr(ptb, "_FAST_WORD", ptb.regex.compile(r"(?!)"))
    monkeypatch.setattr(ptb, "_FAST_SPACE", ptb.regex.compile(r"(?!)"))
    assert ptb.python_lines(CORPUS["captions"][:300]) == fast


@needs_java
def test_committed_corpus_is_what_java_says():
    assert ptb.java_lines(CORPUS["captions"]) == CORPUS["java_tokens"]


@pytest.mark.parametrize("caption,tokens", [
    ("A dog (brown) runs.", "a dog -lrb- brown -rrb- runs"),
    ("It costs $3.50, 50% off?!", "it costs $ 3.50 50 % off ?!"),  # "?!" is not dropped
    ("The U.S. flag and Mr. Smith", "the u.s. flag and mr. smith"),
    ("mail john.doe@example.com", "mail john.doe@example.com"),
    ("He doesn't, I cannot", "he does n't i can not"),
    ('"Hi" [x] {y}', "hi -lsb- x -rsb- -lcb- y -rcb-"),
])
def test_tokens_as_pycocoevalcap(caption, tokens):
    assert ptb.tokenize([caption], "python") == [tokens]
    if ptb.java_available():
        assert ptb.tokenize([caption], "java") == [tokens]


def test_a_line_end_depends_on_the_next_line():
    # "etc." before a capital (a sentence start) is read as "etc." + "." (PTBLexer rule).
    assert ptb.python_lines(["dogs etc.", "Cats"])[0] == ["dogs", "etc.", "."]
    assert ptb.python_lines(["dogs etc.", "cats"])[0] == ["dogs", "etc."]


def test_line_breaks_inside_a_caption_do_not_shift_captions():
    out = ptb.tokenize(["a\rb", "c\u2028d", "e"], "python")
    assert out == ["a b", "c d", "e"]


def test_bad_backend_is_one_line():
    with pytest.raises(ValueError, match="backend must be auto, java or python"):
        ptb.tokenize(["x"], "perl")


def test_cider_python_tokenizer_gives_the_java_value():
    assert metrics.cider_d(CANDS, REFS, "python") * 100 == pytest.approx(506.6066, abs=1e-4)


@needs_java
def test_cider_with_java_reproduces_pycocoevalcap():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    assert metrics.cider_d(CANDS, REFS, "java") * 100 == pytest.approx(506.6066, abs=1e-4)
    # ... which is pycocoevalcap's own pipeline (its tokenizer class, then Cider).
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in CANDS.items()})
    assert Cider().compute_score(gts, res)[0] == pytest.approx(metrics.cider_d(CANDS, REFS))
