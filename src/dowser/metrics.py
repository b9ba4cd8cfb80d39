"""Benchmark metrics and the paper's summary scores, to the official definitions.

    from dowser.metrics import vqa_accuracy, cider_d, h_score
    vqa_accuracy("two", ["2"] * 3 + ["3"] * 7)            # 1.0 (number words normalized)
    cider_d({"1": "a red circle"}, {"1": ["a red circle", "one red circle"]})
    h_score(50.0, 100.0)                                   # 66.67

Per-example metrics return fractions in [0, 1]; corpus metrics (CIDEr-D) return the
scorer's own scale. `dowser.evaluate` multiplies by 100 to report the paper's scale
(accuracy in %, CIDEr x100). Summary scores (`a_up` ... `bwt`) take and return values on
that reported scale.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence

# --- VQA answer normalization ---------------------------------------------------------
# The official VQA / EvalAI answer processor (GT-Vision-Lab vqaEval.py, mmf processors.py
# EvalAIAnswerProcessor), as lmms-eval applies it to TextVQA and OK-VQA.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
            "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Kept verbatim from the official script, including its `(?!<=\d)` typo (a lookahead, not
# the intended lookbehind): changing it would change official numbers.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
_VQA_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
              ">", "<", "@", "`", ",", "?", "!"]


def _vqa_punctuation(text: str) -> str:
    out = text
    for p in _VQA_PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _vqa_digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def normalize_vqa_answer(answer: str) -> str:
    """EvalAI normalization: case, punctuation, number words, articles, contractions."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digits_articles(_vqa_punctuation(text))


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """VQA accuracy: min(#matching humans / 3, 1) averaged over the 10-choose-9 subsets.

    With a single reference the subset average is undefined (it would always be 0): the
    score is then plain exact match after normalization.
    """
    pred = normalize_vqa_answer(prediction)
    refs = [normalize_vqa_answer(r) for r in references]
    if not refs:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    if len(refs) == 1:
        return float(pred == refs[0])
    n_match = sum(r == pred for r in refs)
    # Leaving out a matching answer leaves n_match - 1 matches, any other leaves n_match.
    accs = [min(1.0, (n_match - (r == pred)) / 3.0) for r in refs]
    return sum(accs) / len(accs)


# --- exact match ----------------------------------------------------------------------
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def normalize_answer(answer: str) -> str:
    """Case- and punctuation-insensitive, whitespace-collapsed (lm-eval's exact_match with
    ignore_case and ignore_punctuation, as lmms-eval's GQA task uses it)."""
    return " ".join(answer.lower().translate(_PUNCT_TABLE).split())


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the normalized prediction equals any normalized reference."""
    refs = [references] if isinstance(references, str) else list(references)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in refs))


def lower_match(prediction: str, reference: str) -> float:
    """1.0 if the stripped prediction equals the reference up to case, nothing else normalized: the
    authors' eval_imagenet.py / eval_iconqa.py (`text.lower() == reference.lower()` on the
    generation's `.strip()`; "Centipede." is wrong for "Centipede")."""
    return float(prediction.strip().lower() == reference.lower())


# --- multiple choice (MMBench) --------------------------------------------------------
LETTERS = "ABCDEFGHIJ"
# MMBench's evaluator as lmms-eval runs it (lmms_eval/tasks/mmbench/mmbench_evals.py,
# MMBench_Evaluator.can_infer_option / can_infer_text / can_infer): a letter token of
# "ABCDE", alone or wrapped as below, that is the only one of its form; else the one option
# whose text occurs in the answer. What it cannot read goes to a GPT judge there, or in
# lmms-eval's judge-free "static" mode to `extract_mcq_answer`
# (lmms_eval/tasks/_task_utils/mcq_extract.py): we have no judge and use that fallback,
# which also reads Chinese answers ("答案是B", "答案：C", "选项C。").
_OPTION_LETTERS = "ABCDE"  # can_infer_option(answer, num_choice=5)
_LETTER_WRAPS = [("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."),
                 (":", ""), (":", ","), (":", "."), (":", ")"), (":", ").")]


def can_infer_option(answer: str, letters: str = _OPTION_LETTERS) -> str | None:
    """MMBench's letter matcher: the letter of the one token of a form, else None."""
    if "Failed to obtain answer via API" in answer:
        return None
    splits = [x.strip() for x in answer.split()]
    hits = [c for c in letters if c in splits]
    # A bare "A" in a longer answer may be the article: then only the wrapped forms count.
    if len(hits) == 1 and not ("A" in splits and len(splits) > 3):
        return hits[0]
    for pre, post in _LETTER_WRAPS:
        hits = [c for c in letters if pre + c + post in splits]
        if len(hits) == 1:
            return hits[0]
    return None


def can_infer_text(answer: str, choices: Sequence[str]) -> str | None:
    """MMBench's text matcher: the letter of the one option whose text is in the answer."""
    low = answer.lower()
    found = [LETTERS[i] for i, c in enumerate(choices) if str(c).lower() in low]
    return found[0] if len(found) == 1 else None


# lmms-eval mcq_extract: phrases after which the first choice letter is the answer.
_ANSWER_PHRASES = [
    "the answer is", "answer is", "the correct answer is", "correct answer is",
    "the best answer is", "best answer is", "the correct option is", "correct option is",
    "the best option is", "best option is", "the choice is", "choice is",
    "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选",
    "答えは"]
_FORMS = [("({})", "parentheses", 6), ("{}.", "period", 5), ("{}:", "colon", 4),
          ("{})", "right_paren", 3), ("{} ", "space", 2)]


def extract_mcq_letter(response: str, letters: Sequence[str] = "ABCDEFGH") -> str | None:
    """lmms-eval's judge-free reader: every letter form found scores (priority, position);
    the highest wins (start 10, end 9, answer phrase 7, "(B)" 6, "B." 5, "B:" 4, "B)" 3,
    "B " 2; any occurrence 0, only when nothing else is found)."""
    if not response or not response.strip():
        return None
    text = response.strip()
    for ch in ",.!?;:'\"":
        text = text.strip(ch)
    text = f" {text} "
    cands: list[tuple[int, int, str]] = []
    for form, _, prio in _FORMS:
        cands += [(prio, text.rfind(form.format(c)), c) for c in letters if form.format(c) in text]
    low = text.lower()
    for phrase in _ANSWER_PHRASES:
        idx = low.find(phrase)
        if idx != -1:
            cands += [(7, pos, c) for c in letters
                      if (pos := text.find(c, idx + len(phrase))) != -1]
    stripped = text.strip()
    for c in letters:
        if stripped.startswith(c) and (len(stripped) == 1 or not stripped[1].isalpha()):
            cands.append((10, 0, c))
        if stripped.endswith(c) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            cands.append((9, len(text) - 1, c))
    if not cands:
        cands = [(0, text.rfind(c), c) for c in letters if c in text]
    # lmms-eval sorts (priority, position) descending, stably: on a full tie the letter
    # found first (in its scan order) wins.
    return max(cands, key=lambda t: (t[0], t[1]))[2] if cands else None


def extract_option_letter(prediction: str, choices: Sequence[str] = ()) -> str | None:
    """The option letter a free-form answer picks, or None when nothing can be read.

    MMBench's `can_infer` (letter token, else option text), then lmms-eval's judge-free
    fallback over the options' letters (every letter A-H when there are no options).
    """
    pred = prediction.strip()  # lmms-eval strips the response before matching
    found = can_infer_option(pred) or can_infer_text(pred, choices)
    if found:
        return found
    return extract_mcq_letter(pred, LETTERS[: len(choices)] if choices else "ABCDEFGH")


def option_letter_match(prediction: str, answer: str, choices: Sequence[str] = ()) -> float:
    """1.0 if the letter extracted from the prediction is the answer's letter."""
    return float(extract_option_letter(prediction, choices) == answer.strip().upper())


def circular_accuracy(records: Iterable[tuple[object, float]]) -> float:
    """MMBench CircularEval: a question counts only if every circular shift of its options
    (the records sharing its group key) is answered correctly. Groups of one are plain
    accuracy."""
    groups: dict[object, bool] = {}
    for key, correct in records:
        groups[key] = groups.get(key, True) and bool(correct)
    if not groups:
        return float("nan")
    return sum(groups.values()) / len(groups)


# --- CIDEr-D --------------------------------------------------------------------------
def cider_d(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
            tokenizer: str = "auto") -> float:
    """Corpus CIDEr-D (pycocoevalcap's `Cider`: n=1..4, sigma=6, clipped, x10 inside).

    Returns the scorer's value (COCO papers print it x100). Document frequencies come from
    the evaluated references, so scores depend on the whole set, as in the official code.
    Captions are tokenized as pycocoevalcap does (`dowser.ptb`: its Java PTB tokenizer when
    `java` is on PATH, else the Python port; `tokenizer` = "java" / "python" forces one):
    references in one batch, predictions in another, in the order of `predictions`.
    """
    from pycocoevalcap.cider.cider import Cider

    from dowser import ptb

    missing = [k for k in predictions if k not in references]
    if missing:
        raise ValueError(f"cider_d: no references for {len(missing)} ids, e.g. {missing[0]!r}")
    if not predictions:
        return float("nan")
    keys = list(predictions)
    flat_refs = [r for k in keys for r in references[k]]
    tok_refs = iter(ptb.tokenize(flat_refs, tokenizer))
    gts = {k: [next(tok_refs) for _ in references[k]] for k in keys}
    res = {k: [t] for k, t in zip(keys, ptb.tokenize([predictions[k] for k in keys], tokenizer))}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


# --- the paper's summary scores (docs/method.md §4) -----------------------------------
def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    if not vals:
        raise ValueError("mean of no values")
    return sum(vals) / len(vals)


def a_up(upstream: Mapping[str, float] | Iterable[float]) -> float:
    """A_up: mean upstream accuracy (%)."""
    return _mean(upstream.values() if isinstance(upstream, Mapping) else upstream)


def a_down(downstream: Mapping[str, float] | Iterable[float]) -> float:
    """A_down: mean downstream metric (accuracy % or CIDEr x100)."""
    return _mean(downstream.values() if isinstance(downstream, Mapping) else downstream)


def avg(a_up_value: float, a_down_value: float) -> float:
    return (a_up_value + a_down_value) / 2.0


def h_score(a_up_value: float, a_down_value: float) -> float:
    """Harmonic mean 2 A_up A_down / (A_up + A_down); 0 when both are 0."""
    total = a_up_value + a_down_value
    return 0.0 if total == 0 else 2.0 * a_up_value * a_down_value / total


# --- continual learning (Appendix H) --------------------------------------------------
def _matrix(acc) -> list[list[float]]:
    rows = [list(map(float, r)) for r in acc]
    if not rows or any(len(r) != len(rows) for r in rows):
        raise ValueError("accuracy matrix must be square T x T (row t: after training task t)")
    return rows


def mft(acc) -> float:
    """Mean fine-tune accuracy: mean_i A[i][i]."""
    a = _matrix(acc)
    return _mean(a[i][i] for i in range(len(a)))


def mfn(acc) -> float:
    """Mean final accuracy: mean_i A[T-1][i]."""
    a = _matrix(acc)
    return _mean(a[-1])


def maa(acc) -> float:
    """Mean average accuracy: mean_t mean_{i<=t} A[t][i]."""
    a = _matrix(acc)
    return _mean(_mean(a[t][: t + 1]) for t in range(len(a)))


def bwt(acc) -> float:
    """Backward transfer: mean_{i<T-1} (A[T-1][i] - A[i][i]); NaN for a single task."""
    a = _matrix(acc)
    if len(a) < 2:
        return math.nan
    return _mean(a[-1][i] - a[i][i] for i in range(len(a) - 1))
