"""Functions the shipped lm-eval YAMLs call (`!function dowser.tasks.hooks.<name>`).

Docs are common-schema rows (`dowser.tasks`). Prompts follow lmms-eval's task files
(EvolvingLMMs-Lab/lmms-eval, lmms_eval/tasks/<benchmark>/); each prompt begins with the
`<image>` marker, which lm-eval's multimodal chat formatting turns into an image
entry of the processor's chat template. Metric values are fractions (lm-eval's scale);
`dowser.evaluate` reports them x100.
"""

from __future__ import annotations

import io

from dowser import metrics
from dowser.tasks import images

IMAGE = "<image>"
SHORT = "\nAnswer the question using a single word or phrase."
OKVQA_POST = ("\nWhen the provided information is insufficient, respond with 'Unanswerable'."
              "\nAnswer the question using a single word or phrase.")
MMBENCH_EN = ("There are several options:", "Answer with the option's letter from the given "
              "choices directly.")
MMBENCH_CN = ("有如下几个选项：", "请直接使用所提供的选项字母作为答案回答。")
CAPTION = "Provide a one-sentence caption for the provided image."
ICONQA_HEAD = "Given a set of images and a question, please provide the answer to the question.\n"
ICONQA_TAIL = "Please answer with the option letter from the given choices directly."


# --- data ---------------------------------------------------------------------------
def load_docs(benchmark: str | None = None, data_root: str | None = None,
              split: str | None = None, **_metadata):
    """`custom_dataset` of every shipped task: one split in the common schema."""
    import datasets

    from dowser.tasks import load_split

    if benchmark is None:
        raise ValueError("dowser task config lacks dataset_kwargs.benchmark")
    docs = load_split(benchmark, data_root, split)
    # lm-eval holds every doc and request until the task ends: docs keep a reference to their
    # image, and the model reads and decodes each batch's images (dowser.tasks.images).
    column = docs.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    key = images.register(column, f"{benchmark}/{split or ''}@{data_root}")
    docs = docs.remove_columns("image")
    docs = docs.add_column("image_ref", [f"{key}#{i}" for i in range(len(docs))])
    return datasets.DatasetDict({"test": docs})


def doc_to_image(doc):
    """[ImageRef] for docs from load_docs; a decoded RGB image for docs that carry one."""
    if doc.get("image_ref") is not None:
        return [images.ImageRef.parse(doc["image_ref"])]
    image = doc["image"]
    if isinstance(image, dict):  # encoded: {"bytes", "path"}
        from PIL import Image

        image = Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"])
    return [image.convert("RGB")]


# --- prompts ------------------------------------------------------------------------
def world_text(doc) -> str:
    return IMAGE + doc["question"]


def short_answer_text(doc) -> str:  # GQA, OCR-VQA
    return IMAGE + doc["question"] + SHORT


def textvqa_text(doc) -> str:  # lmms-eval capitalizes; OCR tokens off (its default)
    return IMAGE + doc["question"].capitalize() + SHORT


def textvqa_ocr_text(doc) -> str:  # LLaVA-1.5's own TextVQA protocol (its 58.2)
    ocr = f"\nReference OCR token: {doc['hint']}" if doc.get("hint") else ""
    return IMAGE + doc["question"].capitalize() + ocr + SHORT


def okvqa_text(doc) -> str:
    return IMAGE + doc["question"] + OKVQA_POST


def _options(choices, head: str) -> str:
    return head + "\n" + "\n".join(f"{metrics.LETTERS[i]}. {c}" for i, c in enumerate(choices))


def _mmbench(doc, head: str, tail: str) -> str:
    hint = doc.get("hint") or ""
    body = f"{doc['question']} {_options(doc['choices'], head)}"
    return IMAGE + (f"{hint} {body}" if hint else body) + "\n" + tail


def mmbench_en_text(doc) -> str:
    return _mmbench(doc, *MMBENCH_EN)


def mmbench_cn_text(doc) -> str:
    return _mmbench(doc, *MMBENCH_CN)


def caption_text(doc) -> str:
    return IMAGE + CAPTION


def iconqa_text(doc) -> str:
    if not doc["choices"]:  # UCIT's LLaVA-format rows carry options in the question
        return IMAGE + doc["question"]
    opts = "\n".join(f"{metrics.LETTERS[i]}. {c}" for i, c in enumerate(doc["choices"]))
    return (IMAGE + ICONQA_HEAD + f"Question: {doc['question']}.\nOptions:\n{opts}\n"
            + ICONQA_TAIL)


def question_text(doc) -> str:  # UCIT ImageNet-R: the instruction is part of the question
    return IMAGE + doc["question"]


# --- evaluate.preset authors (dowser.presets.AUTHORS_EVAL) --------------------------
def authors_text(doc) -> str:
    """The authors' question files (LLaVA/llava/eval/*/model_vqa_*.py read `text`): the row's
    question as written; a row with an option list gets `\nA. ..` lines, as their IconQA file
    writes them (no instruction). The conversation puts the image before it."""
    opts = "".join(f"\n{metrics.LETTERS[i]}. {c}" for i, c in enumerate(doc["choices"]))
    return IMAGE + doc["question"] + opts


def authors_target(doc) -> str:
    """Their reference: IconQA's is `Answer: <letter>` (data/icon_vqa/test.jsonl); else the answer."""
    choices = list(doc["choices"])
    if doc["answer"] in choices:
        return f"Answer: {metrics.LETTERS[choices.index(doc['answer'])]}"
    return doc["answer"]


def authors_results(doc, results) -> dict:
    return {"exact_match": metrics.lower_match(results[0], authors_target(doc))}


# --- per-example results ------------------------------------------------------------
def _refs(doc) -> list[str]:
    return list(doc.get("references") or [doc["answer"]])


def exact_match_results(doc, results) -> dict:
    return {"exact_match": metrics.exact_match(results[0], _refs(doc))}


def vqa_results(doc, results) -> dict:
    return {"vqa_acc": metrics.vqa_accuracy(results[0], _refs(doc))}


def mc_letter_results(doc, results) -> dict:
    ok = metrics.option_letter_match(results[0], doc["answer"], doc["choices"])
    return {"mc_letter": (doc.get("group") or doc["id"], ok)}


def iconqa_results(doc, results) -> dict:
    """Exact match on the option text; an option letter is read as its option."""
    pred, choices = results[0].strip(), list(doc["choices"])
    letter = metrics.extract_option_letter(pred, choices) if len(pred) <= 3 else None
    if letter is not None and metrics.LETTERS.index(letter) < len(choices):
        pred = choices[metrics.LETTERS.index(letter)]
    return {"exact_match": metrics.exact_match(pred, _refs(doc))}


def cider_results(doc, results) -> dict:
    return {"cider": (doc["id"], results[0], _refs(doc))}


# --- corpus aggregations ------------------------------------------------------------
def circular_mean(items) -> float:
    return metrics.circular_accuracy(items)


def cider_aggregate(items) -> float:
    preds = {str(i): p for i, p, _ in items}
    refs = {str(i): list(r) for i, _, r in items}
    return metrics.cider_d(preds, refs)


# --- label-restricted accuracy (log-likelihood over the closed answer set) -----------
def label_choices(doc) -> list[str]:
    """The closed answer set: `choices`, or their letters when the answer is a letter."""
    choices = list(doc["choices"])
    if doc["answer"] in choices:
        return choices
    letters = list(metrics.LETTERS[: len(choices)])
    if doc["answer"] in letters:
        return letters
    raise ValueError(f"answer {doc['answer']!r} of {doc['id']!r} is not among its choices")


def label_target(doc) -> int:
    return label_choices(doc).index(doc["answer"])
