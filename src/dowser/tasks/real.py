"""Row adapters: each real benchmark's published schema -> the common schema.

An adapter takes one raw row (images left undecoded: `{"bytes", "path"}` dicts) and
returns a list of common rows (OCR-VQA stores several questions per image, IconQA keeps
only its text multiple-choice questions). Column names are those of the hub datasets
named in `dowser.tasks` (read from lmms-eval's task utils, which consume them):

| adapter | raw columns used |
|---|---|
| textvqa, okvqa | question_id, question, image, answers (10 human answers) |
| ocrvqa | image, questions[], answers[] (image_id if present; or flat question/answer) |
| gqa | id, imageId, question, answer (+ image joined from testdev_balanced_images) |
| mmbench | index, question, hint, A-D, answer (letter), image |
| coco | question_id, image, answer (5 captions) |
| flickr | img_id, image, caption (5 captions) |
| iconqa | question_id, question, ques_type, choices ("a,b,c"), answer, query_image |
| llava | id, image (path), conversations [{from: human}, {from: gpt}] or text/answer or text/reference |
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

COCO_PROMPT = "Provide a one-sentence caption for the provided image."
# MMBench's circular copies of a question share index mod 1e6 (VLMEvalKit / lmms-eval).
CIRCULAR_STRIDE = 1_000_000


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value == "nan"


def row(id_, image, question, answer, references=None, choices=(), task="", hint="", group=None):
    return {"id": str(id_), "image": image, "question": question, "answer": answer,
            "references": list(references if references is not None else [answer]),
            "choices": list(choices), "task": task, "hint": hint,
            "group": str(group if group is not None else id_)}


def _vqa(r, task):
    answers = [str(a) for a in r["answers"]]
    majority = Counter(answers).most_common(1)[0][0] if answers else ""
    # TextVQA's OCR tokens ride in `hint`: only the textvqa-ocr prompt shows them.
    ocr = ", ".join(r.get("ocr_tokens") or [])
    return [row(r["question_id"], r["image"], r["question"], majority, answers, task=task,
                hint=ocr)]


def textvqa(r, task="textvqa"):
    return _vqa(r, task)


def okvqa(r, task="okvqa"):
    return _vqa(r, task)


def ocrvqa(r, task="ocrvqa"):
    if "questions" not in r:
        return [row(r.get("question_id", r.get("id")), r["image"], r["question"],
                    str(r["answer"]), task=task)]
    base = r.get("image_id") or r.get("id")
    if base is None:  # no id column: name the cover by its bytes
        base = hashlib.sha1(r["image"]["bytes"] or r["image"]["path"].encode()).hexdigest()[:12]
    return [row(f"{base}-{k}", r["image"], q, str(a), task=task)
            for k, (q, a) in enumerate(zip(r["questions"], r["answers"]))]


def gqa(r, task="gqa"):
    return [row(r["id"], r["image"], r["question"], str(r["answer"]), task=task)]


def mmbench(r, task="mmbench"):
    choices = [str(r[c]) for c in "ABCD" if c in r and not _missing(r[c])]
    hint = "" if _missing(r.get("hint")) else str(r["hint"])
    return [row(r["index"], r["image"], r["question"], str(r["answer"]).strip(),
                choices=choices, task=task, hint=hint,
                group=int(r["index"]) % CIRCULAR_STRIDE)]


def coco(r, task="coco-caption"):
    caps = [str(c) for c in r["answer"]]
    return [row(r["question_id"], r["image"], COCO_PROMPT, caps[0], caps, task=task)]


def flickr(r, task="flickr30k"):
    caps = [str(c) for c in r["caption"]]
    return [row(r["img_id"], r["image"], COCO_PROMPT, caps[0], caps, task=task)]


def iconqa(r, task="iconqa"):
    # The paper uses IconQA's text multiple-choice questions only (Appendix E.1).
    if r.get("ques_type", "choose_txt") != "choose_txt":
        return []
    raw = r["choices"]
    choices = [c.strip() for c in raw.split(",")] if isinstance(raw, str) else list(raw)
    answer = str(r["answer"]).strip()
    if answer not in choices and answer.isdigit() and int(answer) < len(choices):
        answer = choices[int(answer)]
    return [row(r["question_id"], r.get("query_image", r.get("image")), r["question"],
                answer, choices=choices, task=task)]


def _resolve(image: str, roots) -> str:
    """A relative image path against the first root holding it (UCIT keeps its images
    apart from its JSON: try the file's folder, then the data root and its parent)."""
    path = Path(image)
    if path.is_absolute():
        return str(path)
    for root in roots:
        if root is not None and (Path(root) / path).exists():
            return str(Path(root) / path)
    return str(Path(roots[0] or ".") / path)


def llava(r, task="", base_dir: Path | None = None):
    """LLaVA conversation JSON (UCIT / HiDe-LLaVA release format), question/answer rows, or the
    authors' question files (Model-Dowser `data/<task>/test.jsonl`: `text` and `reference`, a
    caption list or one answer string)."""
    references = None
    if "conversations" in r:
        turns = r["conversations"]
        question = next(t["value"] for t in turns if t["from"] == "human")
        answer = next(t["value"] for t in turns if t["from"] == "gpt")
    else:
        question = r.get("text", r.get("question"))
        answer = r.get("answer", r.get("label"))
        if r.get("reference") is not None:
            ref = r["reference"]
            references = [str(x) for x in ([ref] if isinstance(ref, str) else ref)]
            answer = references[0]
    question = question.replace("<image>", "").strip()
    image = r["image"]
    if isinstance(image, str):
        roots = [base_dir] + ([base_dir.parent, base_dir.parent.parent] if base_dir else [])
        image = {"bytes": None, "path": _resolve(image, roots)}
    return [row(r.get("id", r.get("question_id")), image, question, str(answer).strip(),
                references, task=task)]


ADAPTERS = {f.__name__: f for f in (textvqa, okvqa, ocrvqa, gqa, mmbench, coco, flickr,
                                    iconqa, llava)}
