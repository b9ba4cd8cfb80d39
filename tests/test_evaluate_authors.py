"""`evaluate.preset: authors`: the authors' downstream evaluation (Model-Dowser 6efd4e1,
LLaVA/llava/eval/{coco,flickr30k,iconqa,imagenet}/model_vqa_*.py defaults and eval_*.py)."""

import copy
import io
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dowser import metrics
from dowser.evaluate import evaluate_benchmarks, task_configs
from dowser.preprocess import LLAVA_V1_SYSTEM, prepare_processor
from dowser.presets import AUTHORS_EVAL, eval_params
from dowser.spec import build_grid
from dowser.tasks import get_task, hooks
from tests.test_preprocess import expand, ref_prompt, ref_tokenizer_image_token
from tests.tinymodels import tiny_llava, tiny_llava_processor

CONFIG = yaml.safe_load(open("config.yaml"))
QUESTION = "What is the object in the image?\nAnswer the question using a single word or phrase."


def test_their_metric_is_lower_case_equality_only():
    assert metrics.lower_match(" Centipede\n", "centipede") == 1.0
    assert metrics.lower_match("Centipede.", "Centipede") == 0.0  # ours (exact_match) drops the period
    assert metrics.exact_match("Centipede.", "Centipede") == 1.0
    assert metrics.lower_match("answer: b", "Answer: B") == 1.0 and metrics.lower_match("B", "Answer: B") == 0.0


def test_their_prompt_and_reference_from_our_rows():
    icon = {"question": "Which shape?", "choices": ["circle", "square"], "answer": "square"}
    assert hooks.authors_text(icon) == "<image>Which shape?\nA. circle\nB. square"
    assert hooks.authors_target(icon) == "Answer: B"
    assert hooks.authors_results(icon, ["Answer: B "]) == {"exact_match": 1.0}
    assert hooks.authors_results(icon, ["square"]) == {"exact_match": 0.0}
    caption = {"question": "Provide a short description of the image.", "choices": [], "answer": "a cat"}
    assert hooks.authors_text(caption) == "<image>Provide a short description of the image."
    assert hooks.authors_target(caption) == "a cat"


def test_task_configs_take_their_decoding_for_their_benchmarks_only():
    (icon,) = task_configs(get_task("iconqa"), None, 16, AUTHORS_EVAL)  # no label task
    assert icon["generation_kwargs"] == {"until": [], "max_gen_toks": 128, "do_sample": True,
                                         "temperature": 0.2, "top_p": 1.0, "top_k": 50}
    assert icon["doc_to_text"] is hooks.authors_text and icon["process_results"] is hooks.authors_results
    (coco,) = task_configs(get_task("coco-caption"), None, 16, AUTHORS_EVAL)
    assert coco["process_results"] is hooks.cider_results and coco["generation_kwargs"]["max_gen_toks"] == 128
    assert task_configs(get_task("gqa"), None, 16, AUTHORS_EVAL) == task_configs(get_task("gqa"), None, 16)
    assert len(task_configs(get_task("iconqa"), None, 16)) == 2  # ours: + label-restricted accuracy


def test_preset_in_the_eval_ids(tmp_path):
    ev = dict(CONFIG["evaluate"])
    assert eval_params(ev) == {"limit": ev["limit"], "max_new_tokens": ev["max_new_tokens"]}
    assert eval_params({**ev, "preset": "default"}) == eval_params(ev)
    assert eval_params({**ev, "preset": "authors"})["authors"] == AUTHORS_EVAL
    with pytest.raises(ValueError, match="^evaluate.preset: 'lmms' is not one of default, authors$"):
        eval_params({**ev, "preset": "lmms"})
    c = copy.deepcopy(CONFIG)
    c["model"] = {"source": "hub", "name": "llava-hf/llava-1.5-7b-hf", "preprocess": "llava"}
    c["data"] = {"root": str(tmp_path)}
    c["evaluate"].update(upstream=["gqa"], downstream=["imagenet-r"])
    c["finetune"]["tasks"] = ["imagenet-r"]
    ours = build_grid(c)
    c["evaluate"]["preset"] = "authors"
    theirs = build_grid(c)
    assert set(theirs.runs) == set(ours.runs) and not set(theirs.evals) & set(ours.evals)
    assert all(e.params["preset"] == "authors" for e in theirs.evals.values())
    c["model"]["preprocess"] = "hf"
    with pytest.raises(ValueError, match="^evaluate.preset: 'authors' needs model.preprocess 'llava'"):
        build_grid(c)


def _png(seed, shape):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    """Their ImageNet-R file form (question_id, image, text, answer), one wide and one tall image."""
    root = tmp_path_factory.mktemp("authors")
    (root / "imagenet-r").mkdir()
    rows = []
    for i, (shape, answer) in enumerate([((20, 41, 3), "Ant"), ((50, 30, 3), "Llama")]):
        (root / "imagenet-r" / f"{i}.png").write_bytes(_png(i, shape))
        rows.append({"question_id": str(i + 1), "image": f"{i}.png", "text": QUESTION, "answer": answer})
    (root / "imagenet-r" / "test.json").write_text(json.dumps(rows))
    return root


def test_evaluation_runs_their_protocol(imagenet_root, tmp_path, monkeypatch):
    """Their conversation (llava_v1) and images reach generate() with their sampling settings; the
    score is their metric over the saved predictions; the seed makes the samples repeatable."""
    proc = prepare_processor(tiny_llava_processor(), "llava")
    model = tiny_llava(vocab=len(proc.tokenizer), image_token=proc.image_token_id)
    calls, generate = [], model.generate

    def spy(**kw):
        calls.append(kw)
        return generate(**kw)

    monkeypatch.setattr(model, "generate", spy)
    res = evaluate_benchmarks(model, proc, ["imagenet-r"], imagenet_root, authors=AUTHORS_EVAL, out_dir=tmp_path)
    (kw,) = calls  # one batch of two
    assert (kw["do_sample"], kw["temperature"], kw["top_p"], kw["top_k"], kw["max_new_tokens"]) == (
        True, 0.2, 1.0, 50, 128)
    tok = proc.tokenizer
    want = expand(ref_tokenizer_image_token(ref_prompt(QUESTION, system=LLAVA_V1_SYSTEM), tok), proc.image_token_id)
    assert [row[m.bool()].tolist() for row, m in zip(kw["input_ids"], kw["attention_mask"])] == [want, want]
    assert kw["pixel_values"].shape == (2, 3, 28, 28)
    preds = [json.loads(line) for line in (tmp_path / "imagenet-r.predictions.jsonl").read_text().splitlines()]
    assert res["imagenet-r"]["value"] == 100 * np.mean([metrics.lower_match(p["prediction"], p["answer"])
                                                        for p in preds])
    again = evaluate_benchmarks(model, proc, ["imagenet-r"], imagenet_root, authors=AUTHORS_EVAL,
                                out_dir=tmp_path / "again")
    assert (tmp_path / "again" / "imagenet-r.predictions.jsonl").read_text() == (
        tmp_path / "imagenet-r.predictions.jsonl").read_text() and again["imagenet-r"]["n"] == 2
    torch.manual_seed(1)
    with pytest.raises(ValueError, match="^evaluate.preset 'authors' needs model.preprocess 'llava'"):
        evaluate_benchmarks(model, proc.processor, ["imagenet-r"], imagenet_root, authors=AUTHORS_EVAL)


def test_the_evaluate_stage_passes_the_preset(imagenet_root, tmp_path):
    """`dowser evaluate` with an authors EvalSpec on a model folder whose spec.json says llava gives
    what evaluate_benchmarks gives with the preset (same weights: tiny_llava's seed)."""
    from dowser.cli import main
    from dowser.spec import EvalSpec

    proc = tiny_llava_processor()
    tiny_llava(vocab=len(proc.tokenizer), image_token=proc.image_token_id).save_pretrained(tmp_path / "model")
    proc.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "spec.json").write_text(json.dumps({"kind": "model", "preprocess": "llava"}))
    params = eval_params({"limit": None, "max_new_tokens": 16, "preset": "authors"})
    spec = EvalSpec(model="m", benchmarks=("imagenet-r",), params=params)
    argv = ["evaluate", "--spec", spec.to_json(), "--model", str(tmp_path / "model"), "--data", str(imagenet_root)]
    assert main(argv + ["--out", str(tmp_path / "eval")]) == 0
    model = tiny_llava(vocab=len(proc.tokenizer), image_token=proc.image_token_id)
    evaluate_benchmarks(model, prepare_processor(proc, "llava"), ["imagenet-r"], imagenet_root, batch_size=64,
                        authors=AUTHORS_EVAL, out_dir=tmp_path / "direct")
    assert (tmp_path / "eval" / "imagenet-r.predictions.jsonl").read_text() == (
        tmp_path / "direct" / "imagenet-r.predictions.jsonl").read_text()
    spec = EvalSpec(model="m", benchmarks=("imagenet-r",), params=eval_params({"limit": None, "max_new_tokens": 16}))
    argv[2] = spec.to_json()
    assert main(argv + ["--out", str(tmp_path / "ours")]) == 0  # greedy, our prompt: other predictions
    assert (tmp_path / "ours" / "imagenet-r.predictions.jsonl").read_text() != (
        tmp_path / "eval" / "imagenet-r.predictions.jsonl").read_text()
