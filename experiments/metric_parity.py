"""Do our metrics agree with the reference implementations? Seeded corpora, counted.

    python experiments/metric_parity.py ptb      # Java PTB tokenizer -> tests/data/ptb_captions.json
    python experiments/metric_parity.py check    # vs lmms-eval -> experiments/results/metric_parity.json

`ptb` writes tricky captions (hand-picked cases + seeded random mixes of them into COCO-style
captions) with the tokens pycocoevalcap's Java tokenizer gives them; tests/test_ptb.py
holds the Python port to those. `check` compares, on seeded draws:

- VQA accuracy: `dowser.metrics.vqa_accuracy` vs lmms-eval's `EvalAIAnswerProcessor` with
  the leave-one-out loop of its `textvqa_process_results` (20,000 prediction/answer draws);
- MMBench: `dowser.metrics.extract_option_letter` vs lmms-eval's `MMBench_Evaluator.can_infer`
  then its judge-free `extract_mcq_answer` (every answer style below x option sets);
- CIDEr tokenization: Python port vs Java on the committed caption corpus, and on 9,000
  held-out captions and random strings (`ptb_heldout`) when Java is present.

lmms-eval is read from its files (no `import lmms_eval`: its package imports pull torch
and more): `pip install --no-deps lmms-eval loguru` is all `check` needs.
tests/test_metric_parity.py runs the same comparisons where lmms-eval is installed.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PTB_CORPUS = ROOT / "tests" / "data" / "ptb_captions.json"
RESULTS = ROOT / "experiments" / "results" / "metric_parity.json"

# --- captions ---------------------------------------------------------------------------
# Each pycocoevalcap-vs-stand-in difference named in issue 9 and the lexer's other rules.
TRICKY = [
    "a dog (brown) runs", "A dog (brown) runs.", "two dogs [left] and {right}", "3.5 inches",
    "it costs $3.50, or 3.5 dollars", "50% off", "100 %", "the u.s. flag", "The U.S. flag.",
    "He lives in the U.S. The end.", "in the U.S. he said", "made in the U.S.A.", "What?!",
    "really?? wow!!!", "dog!? cat?!", "mail john.doe@example.com now", "foo@bar.com.",
    "see www.example.com/page?x=1.", "http://example.com/a.html", "example.org/path",
    "Mr. Smith at St. Louis on Jan. 5th.", "Dr. Who", "Mt. Fuji", "a t.v. on a stand",
    "a T.V. and a D.V.D.", "at 3:30 p.m.", "at 10 a.m. sharp", "e.g. a cat", "i.e. the dog",
    "cats, dogs, etc.", "cats, dogs, etc. The end", "vs. the red team", "No. 5 on fig. 3",
    "ca. 1900", "Acme Inc. and Foo Corp.", "Pty. Ltd", "a.k.a. the boss", "I. M. Pei",
    "It's a man's hat", "the dogs' toys", "he doesn't, isn't, won't, can't", "I'm sure you'll",
    "they'd we've she's", "DON'T STOP", "I cannot go", "we're gonna wanna gotta", "lemme gimme",
    "'Twas the night", "'tis the season", "rock 'n' roll", "y'all come", "o'clock",
    "O'Brien and d'Artagnan", "the 1990's and '90s", "cont'd 'til 'cause", "gov't nat'l",
    'he said "hello" and \'bye\'', '"Quoted at start', 'end with quote"', "the 'best' one",
    "\u201ccurly\u201d and \u2018single\u2019", "a two-story house", "a t-shirt, an x-ray, a co-op",
    "pro-choice anti-war e-mail", "a--b a - b a---b a----b a-----b", "red/blue and 1/2 cup",
    "5 1/2 inches", "10-15 people", "call 1-800-555-1212 or (555) 555-1234", "2010-05-06",
    "05/06/2010", "10,000 ft", "1,000,000 stars", "-5 degrees", "+3 points", "AT&T and b&w",
    "S&P-500", "R&B music", "C++ and C# and .NET", "F# code", "#hashtag and @user",
    "under_score", "*** ** * stars", "~ ^ + = < > | \\ backslash", "x=1 and a+b",
    "wow:) :-) ;-) :D :P", "(^_^) and ^_^", "<b>bold</b> text", "a << b >> c",
    "Ellipsis... and. . . end", "wait.... what", "caf\u00e9 na\u00efve r\u00e9sum\u00e9",
    "\u5317\u4eac and \u6771\u4eac", "em\u2014dash and en\u2013dash", "\u00bd cup and \u00bc",
    "\u20ac5 \u00a35 \u00a25 \u00a55", "US$5 and C$10", "20\u00b0C and 5\u00d73",
    "photo.jpg and index.html", "file.tar.gz", "&amp; &quot;x&quot; &lt;y&gt; a&nbsp;b",
    "&mdash; dash", "the table.A dog", "left.The cat", "a cat.", "a cat .", "A CAT!",
    "vitamin c.", "plan B.", "grade A", "Calif. coast", "Mass. Ave", "Wash. state",
    "Ill. and Tex.", "a sign: STOP; go", "tabs\tand  double  spaces", " leading space",
    "trailing space ", "", "...", "'", '"', "-", "a\u00a0b", "soft\u00adhyphen",
    "zero\u200bwidth", "x-ray's", "cat's-eye marble", "Jr. and Sr.", "Ph.D. student",
    "Bros. circus", "4th of July", "the 2nd floor", "1st place", "a 3-d movie", "2x4 board",
    "the 7:00 train", "3.14159", ".5 seconds", "5.", "No.", "U.S", "U.S.-U.K talks",
    "non-U.S trade", "A. B. C.", "Z.", "Tues. and Wed.", "Sept. 11", "Ft. Worth", "Gen. Lee",
]
_BASES = [
    "a man riding a horse on a beach", "two dogs playing in the park", "a plate of food on a table",
    "a red double decker bus on a street", "a group of people standing near a sign",
    "a cat sleeping on a laptop", "a kitchen with a stove and a sink", "a woman holding an umbrella",
    "a train pulling into a station", "a boy throwing a frisbee", "an airplane flying in the sky",
    "a bowl of fruit next to a vase", "a giraffe standing in a field", "a skateboarder doing a trick",
]
_ENDS = ["", ".", " .", "!", "?", "...", ".\"", ")", " ", ". ", "?!"]


def ptb_captions(seed: int = 0, n_mixed: int = 600) -> list[str]:
    """TRICKY, then seeded mixes: a COCO-style caption with 1-3 tricky pieces spliced in,
    random capitals and endings (the line after each one varies what the lexer sees)."""
    rng = random.Random(seed)
    pieces = [t for t in TRICKY if t.strip()]
    out = list(TRICKY)
    for _ in range(n_mixed):
        words = rng.choice(_BASES).split()
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randint(0, len(words)), rng.choice(pieces))
        text = " ".join(words)
        if rng.random() < 0.5:
            text = text[:1].upper() + text[1:]
        out.append(text + rng.choice(_ENDS))
    return out


_SOUPS = ["abcdeXYZ .,;:!?'\"()[]{}<>-_/\\@#$%&*+=~^|`0123456789\u2019\u201c\u201d\u2014\u00a0"
          "\u00bd\u20ac\u00e9\u4e2d", "aAbB.c'-sn t"]


def ptb_heldout(seed: int = 1) -> list[str]:
    """Captions the port was not developed on: 3,000 more mixes (other seeds) and 6,000
    random strings over punctuation-heavy alphabets."""
    out = [c for s in (seed, seed + 1, seed + 2) for c in ptb_captions(s, 1000)[len(TRICKY):]]
    rng = random.Random(seed)
    for alphabet in _SOUPS:
        out += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
                for _ in range(3000)]
    return out


def write_ptb_corpus() -> dict:
    from dowser import ptb

    captions = ptb_captions()
    java = ptb.java_lines(captions)
    PTB_CORPUS.parent.mkdir(parents=True, exist_ok=True)
    PTB_CORPUS.write_text(json.dumps({
        "made_by": "experiments/metric_parity.py ptb (pycocoevalcap's stanford-corenlp-3.4.1.jar, "
                   "PTBTokenizer -preserveLines -lowerCase, all captions in one batch)",
        "captions": captions, "java_tokens": java}, ensure_ascii=False, indent=0) + "\n")
    return {"captions": len(captions)}


# --- VQA draws ---------------------------------------------------------------------------
_VQA_WORDS = ["two", "2", "Two", "the dog", "a dog", "dogs", "dog.", "Dog!", "yes", "Yes.", "no",
              "dont", "don't", "1,000", "1000", "3.5", "3.50", "red car", "red-car", "red, car",
              "it's", "its", "cant", "can't", "ten", "10", "none", "0", "a", "an apple",
              "the", "#1", "100%", "(a)", "x/y", "x / y", "well-known", "U.S.", "us", "hes",
              "he's", "o'clock", "oclock", "twas", "fish?", "what?!", "  spaced  out ",
              "new\nline", "tab\there", "semi;colon", "e-mail", "email", "$5", "5 dollars"]


def vqa_draws(n: int = 20_000, seed: int = 0) -> list[tuple[str, list[str]]]:
    """(prediction, ten answers) pairs: answers drawn from a few forms so matches are common."""
    rng = random.Random(seed)
    draws = []
    for _ in range(n):
        pool = rng.sample(_VQA_WORDS, rng.randint(1, 4))
        answers = [rng.choice(pool) for _ in range(10)]
        pred = rng.choice(pool) if rng.random() < 0.7 else rng.choice(_VQA_WORDS)
        draws.append((pred, answers))
    return draws


# --- MMBench answers ----------------------------------------------------------------------
MMBENCH_STYLES = [
    "{L}", "{L}.", "({L})", "{L})", "{L}:", "{L}, {T}", "{L}. {T}", "({L}) {T}",
    "The answer is {L}.", "The answer is ({L}) {T}", "Answer: {L}", "answer: {L}",
    "I think it is {L} because {T} fits", "{T}", "It is a {T}.", "Option {L}", "{L} {O}",
    "{L} or {O}", "None of them", "", "答案是{L}", "答案：{L}", "选项{L}。", "答案为{L}", "我选{L}",
    "正确答案是 {L}", "{L}。{T}", "（{L}）", "{L}选项正确", "答：{L}", "The correct option is {L}.",
    "A {T} is shown, so {L}", "A", "E", "Failed to obtain answer via API",
]
_OPTION_SETS = [["cat", "dog", "bird", "fish"], ["red", "green", "blue"], ["yes", "no"],
                ["a teddy bear", "a rabbit", "a cat", "a dog"], ["猫", "狗", "鸟", "鱼"],
                ["left", "right", "top", "bottom"]]


def mmbench_cases() -> list[tuple[str, list[str]]]:
    """Every style x every option set x every correct letter (with another letter {O})."""
    cases = []
    for choices in _OPTION_SETS:
        for i, text in enumerate(choices):
            letter, other = "ABCD"[i], "ABCD"[(i + 1) % len(choices)]
            for style in MMBENCH_STYLES:
                cases.append((style.format(L=letter, T=text, O=other), choices))
    return cases


# --- the lmms-eval side ---------------------------------------------------------------------
def lmms_eval_file(rel: str):
    """A module of the installed lmms-eval, loaded from its file (None if not installed)."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    mod_spec = importlib.util.spec_from_file_location(f"_lmms_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def lmms_vqa_accuracy(processor, prediction: str, answers: list[str]) -> float:
    """lmms_eval/tasks/textvqa/utils.py textvqa_process_results, the scoring lines."""
    import statistics

    res = processor(prediction)
    answers = [processor(a) for a in answers]
    accs = []
    for i in range(len(answers)):
        others = [answers[j] for j in range(len(answers)) if i != j]
        accs.append(min(1, float(len([a for a in others if a == res])) / 3))
    return statistics.mean(accs)


def lmms_mmbench_letter(evaluator, extract, prediction: str, choices: list[str]) -> str | None:
    """MMBench_Evaluator.can_infer, then (judge-free) extract_mcq_answer, as eval_sub_data."""
    item = {c: (choices[i] if i < len(choices) else float("nan")) for i, c in enumerate("ABCD")}
    options = evaluator.build_choices(item)
    pred = prediction.strip()  # mmbench_process_results strips the response
    found = evaluator.can_infer(pred, dict(options))
    if not found:
        found = extract(pred, choices=sorted(options))
    return found or None


def check() -> dict:
    from dowser import metrics, ptb

    out: dict = {"date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0]}
    corpus = json.loads(PTB_CORPUS.read_text())
    port = ptb.python_lines(corpus["captions"])
    out["ptb_python_vs_committed_java"] = {
        "captions": len(port), "agree": sum(a == b for a, b in zip(port, corpus["java_tokens"]))}
    if ptb.java_available():
        java = ptb.java_lines(corpus["captions"])
        out["ptb_java_now_vs_committed"] = {
            "captions": len(java), "agree": sum(a == b for a, b in zip(java, corpus["java_tokens"]))}
        held = ptb_heldout()
        pairs = list(zip(held, ptb.java_lines(held), ptb.python_lines(held)))
        out["ptb_python_vs_java_heldout"] = {
            "captions": len(pairs), "agree": sum(j == p for _, j, p in pairs),
            "first_differences": [(c, j, p) for c, j, p in pairs if j != p][:5]}
    vqa = lmms_eval_file("tasks/_task_utils/vqa_eval_metric.py")
    if vqa is None:
        out["lmms_eval"] = "not installed: VQA and MMBench comparisons not run"
        return out
    from importlib import metadata

    out["lmms_eval"] = metadata.version("lmms-eval")
    processor = vqa.EvalAIAnswerProcessor()
    draws = vqa_draws()
    diffs = [(p, a) for p, a in draws
             if abs(metrics.vqa_accuracy(p, a) - lmms_vqa_accuracy(processor, p, a)) > 1e-12]
    out["vqa_accuracy"] = {"draws": len(draws), "agree": len(draws) - len(diffs),
                           "first_differences": diffs[:5]}
    mmb = lmms_eval_file("tasks/mmbench/mmbench_evals.py")
    mcq = lmms_eval_file("tasks/_task_utils/mcq_extract.py")
    evaluator = mmb.MMBench_Evaluator()
    cases = mmbench_cases()
    diffs = []
    for pred, choices in cases:
        ours = metrics.extract_option_letter(pred, choices)
        ref = lmms_mmbench_letter(evaluator, mcq.extract_mcq_answer, pred, choices)
        if ours != ref:
            diffs.append((pred, choices, ours, ref))
    out["mmbench_letter"] = {"styles": len(MMBENCH_STYLES), "cases": len(cases),
                             "agree": len(cases) - len(diffs), "first_differences": diffs[:5]}
    return out


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "check"
    if what == "ptb":
        print(json.dumps(write_ptb_corpus()))
    elif what == "check":
        res = check()
        RESULTS.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
        print(json.dumps(res, indent=2, ensure_ascii=False))
    else:
        raise SystemExit(f"metric_parity.py: unknown command {what!r} (ptb or check)")


if __name__ == "__main__":
    main(sys.argv[1:])
