"""Evaluate one in-memory VLM on many benchmarks through lm-eval, in one process.

    from dowser.evaluate import evaluate_benchmarks
    res = evaluate_benchmarks(model, processor, ["world-gqa", "world-coco"],
                              Path("results/world/data"), out_dir=Path("results/evals/abc"))
    res["world-coco"]["value"]        # CIDEr-D x100

Each benchmark runs as an lm-eval task built from its shipped YAML (`dowser/tasks/lmeval`)
with the data location filled in, plus a `<name>-labels` multiple-choice task when the
benchmark has a closed answer set (label-restricted accuracy: format loss vs knowledge
loss, docs/world.md §2). Metrics are `dowser.metrics` functions called from the YAMLs' hooks, so
`score_predictions` recomputes the same numbers from a predictions file.
Importing lm-eval costs ~10 s: evaluate all benchmarks of a model in one call.
A job killed midway keeps what it finished: with `resume_key`, benchmarks already written to
`out_dir` under the same key are read back, and a rerun evaluates only the missing ones.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from pathlib import Path

from dowser.tasks import YAML_DIR, TaskInfo, get_task, hooks, images, local_file

SCALE = 100.0  # lm-eval works in fractions; the paper reports % and CIDEr x100
LABEL_SUFFIX = "-labels"


def _check_data(info: TaskInfo, data_root: Path | None) -> None:
    """Fail before lm-eval starts, with one line naming what is missing."""
    if not info.world:
        return
    if data_root is None or not Path(data_root).is_dir():
        raise FileNotFoundError(f"{info.name}: data root {data_root} does not exist")
    if local_file(info.data_name, data_root, info.split) is None:
        raise FileNotFoundError(f"{info.name}: split {info.split!r} not found: expected "
                                f"{Path(data_root) / info.data_name / info.split}.parquet")


def task_configs(info: TaskInfo, data_root: Path | None, max_new_tokens: int,
                 authors: dict | None = None) -> list[dict]:
    """lm-eval task dicts for one benchmark: its generation task (+ its label task). `authors`
    (dowser.presets.AUTHORS_EVAL): their prompt, reference, metric and sampling for the
    benchmarks it lists, and no label task (their rows have no closed answer set)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    data = {"benchmark": info.name, "data_root": None if data_root is None else str(data_root),
            "split": info.split}
    gen = load_yaml(info.yaml_path, resolve_func=True)
    gen.update(task=info.name, dataset_kwargs=data)
    gen["generation_kwargs"] = {**gen.get("generation_kwargs", {}),
                                "max_gen_toks": info.max_new_tokens or max_new_tokens}
    if authors is not None and info.name in authors["benchmarks"]:
        gen.update(doc_to_text=hooks.authors_text, doc_to_target=hooks.authors_target)
        if info.metric == "exact_match":
            gen["process_results"] = hooks.authors_results
        gen["generation_kwargs"] = {"until": [], "max_gen_toks": authors["max_new_tokens"], "do_sample": True,
                                    **{k: authors[k] for k in ("temperature", "top_p", "top_k")}}
        return [gen]
    configs = [gen]
    if info.label_acc:
        labels = load_yaml(YAML_DIR / "labels.yaml", resolve_func=True)
        labels.update(task=info.name + LABEL_SUFFIX, dataset_kwargs=dict(data),
                      doc_to_text=gen["doc_to_text"], doc_to_image=gen["doc_to_image"])
        configs.append(labels)
    return configs


class _QuietCustomDataset(logging.Filter):
    """lm-eval warns about custom-dataset kwargs on every task build; ours are set."""

    def filter(self, record):
        return "Custom kwargs can be passed" not in record.getMessage()


_QUIET = _QuietCustomDataset()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prediction_rows(info: TaskInfo, out: dict) -> list[dict]:
    samples = sorted(out["samples"][info.name], key=lambda s: s["doc_id"])
    labels = {s["doc_id"]: s for s in out["samples"].get(info.name + LABEL_SUFFIX, [])}
    rows = []
    for s in samples:
        doc = s["doc"]
        score = s.get(info.metric)  # the YAML's process_results key is the metric name
        if isinstance(score, (tuple, list)):  # corpus metrics keep (id, ..) per example
            score = score[1] if info.metric == "mc_letter" else None
        row = {"id": doc["id"], "prediction": s["filtered_resps"][0], "answer": doc["answer"],
               "score": score}
        if s["doc_id"] in labels:
            lab = labels[s["doc_id"]]
            lls = [r[0] if isinstance(r, (tuple, list)) else r for r in lab["filtered_resps"]]
            best = max(range(len(lls)), key=lls.__getitem__)
            row["label_prediction"] = hooks.label_choices(lab["doc"])[best]
            row["label_correct"] = bool(lab.get("acc"))
        rows.append(row)
    return rows


def _summary(info: TaskInfo, out: dict, seconds: float) -> dict:
    res = out["results"][info.name]
    value = res[f"{info.metric},none"]
    n = int(out["n-samples"][info.name]["effective"])
    label = out["results"].get(info.name + LABEL_SUFFIX, {}).get("acc,none")
    return {"benchmark": info.name, "metric": info.metric, "value": SCALE * float(value),
            "n": n, "label_acc": None if label is None else SCALE * float(label),
            "examples_per_s": n / seconds if seconds > 0 else float("nan"),
            "seconds": seconds, "role": info.role}


def _run_lmeval(lm, manager, configs: list[dict], limit: int | None) -> dict:
    """`lm_eval.evaluator.evaluate` on freshly built tasks: what `simple_evaluate` does for
    a pre-built model, minus its environment report (a `pip list` subprocess, ~0.5 s per
    call) and bootstrap standard errors."""
    import lm_eval.evaluator as evaluator

    loaded = manager.load(configs)
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=0)
    # Frozen objects are skipped by the collector: whatever still calls gc.collect() (lm-eval's
    # own loops) scans only what this run allocates, not all of lm-eval and transformers.
    gc.freeze()
    # Logged samples keep their images; lm-eval would PNG-encode and hash every one of
    # them (~10% of the run) for sample files we do not write.
    hashing, evaluator.LMEVAL_HASHMM = evaluator.LMEVAL_HASHMM, False
    try:
        return evaluator.evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=0,
                                  log_samples=True, apply_chat_template=True)
    finally:
        evaluator.LMEVAL_HASHMM = hashing
        lm.forget()
        images.release()
        gc.unfreeze()


def input_stamp(path: Path | None) -> list | None:
    """(name, bytes, mtime ns) of each file directly in `path` (or of the file itself): what a
    resumed evaluation compares to decide that its model and run are the ones it started with."""
    if path is None:
        return None
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _resumable(out_dir: Path, key: dict, names: list[str]) -> set[str]:
    """Benchmarks finished in `out_dir` under `key`; a different key discards them all."""
    key_path = out_dir / "resume.json"
    same = key_path.is_file() and json.loads(key_path.read_text()) == json.loads(json.dumps(key))
    if not same:
        for name in names:
            for suffix in (".json", ".predictions.jsonl"):
                (out_dir / f"{name}{suffix}").unlink(missing_ok=True)
        _atomic_write(key_path, json.dumps(key, indent=2))
        return set()
    # predictions are written before the summary: a summary means the benchmark finished
    return {n for n in names if (out_dir / f"{n}.json").is_file()
            and (out_dir / f"{n}.predictions.jsonl").is_file()}


def evaluate_benchmarks(model, processor, benchmarks: list[str], data_root: Path, *,
                        batch_size: int = 32, limit: int | None = None,
                        max_new_tokens: int = 16, out_dir: Path | None = None,
                        resume_key: dict | None = None, static_cache: bool | None = None,
                        authors: dict | None = None) -> dict[str, dict]:
    """Evaluate `model` (left in eval mode) on every benchmark, in order.

    Returns {benchmark: {"benchmark", "metric", "value" (paper scale), "n", "label_acc"
    (% or None), "examples_per_s" (n / wall seconds of the whole benchmark: generation,
    label scoring, metric), "seconds", "role"}}; with `out_dir`, also writes
    `<benchmark>.json` and `<benchmark>.predictions.jsonl` (id, prediction, answer, score,
    label_prediction) atomically as each benchmark finishes.
    `max_new_tokens` caps short answers; caption tasks use their own cap (TaskInfo).
    `limit` takes the first N examples of each benchmark (a smoke run).
    `resume_key` (with `out_dir`; JSON, e.g. the spec and `input_stamp`s of the model and run):
    benchmarks whose files `out_dir` already holds under this key are read back, not rerun.
    `static_cache`: generate into a static KV cache (default: on accelerators; `InMemoryVLM`).
    `authors` (evaluate.preset authors: EvalSpec.params["authors"]): the authors' evaluation of the
    benchmarks it lists, through `processor` (model.preprocess llava) with their conversation's
    system prompt; torch's RNG is seeded with its seed before each of them (they sample).
    """
    import lm_eval.evaluator  # noqa: F401  (imported before the clock starts)
    from lm_eval.tasks import TaskManager

    from dowser.tasks.model import InMemoryVLM

    infos = [get_task(b) for b in benchmarks]  # unknown names fail before any work
    data_root = None if data_root is None else Path(data_root)
    for info in infos:
        _check_data(info, data_root)
    for name in ("lm_eval", "lm_eval.api.task"):
        logging.getLogger(name).addFilter(_QUIET)  # a no-op when already there
    theirs = None
    if authors is not None:
        from dowser.preprocess import CONVERSATIONS, LlavaV1Processor

        if not isinstance(processor, LlavaV1Processor):
            raise ValueError("evaluate.preset 'authors' needs model.preprocess 'llava' (their evaluation pads "
                             "images and prompts as LLaVA's code does)")
        theirs = processor.with_system(CONVERSATIONS[authors["conversation"]])
    lm = InMemoryVLM(model, processor, batch_size=batch_size, static_cache=static_cache)
    manager = TaskManager(include_path=str(YAML_DIR), include_defaults=False)
    results, done = {}, set()
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if resume_key is not None:
            done = _resumable(Path(out_dir), resume_key, [i.name for i in infos])
    for info in infos:
        if info.name in done:
            results[info.name] = json.loads((Path(out_dir) / f"{info.name}.json").read_text())
            continue
        lm.processor = processor
        if theirs is not None and info.name in authors["benchmarks"]:
            import torch

            lm.processor = theirs
            torch.manual_seed(authors["seed"])
        start = time.perf_counter()
        out = _run_lmeval(lm, manager, task_configs(info, data_root, max_new_tokens, authors), limit)
        summary = _summary(info, out, time.perf_counter() - start)
        results[info.name] = summary
        if out_dir is not None:
            rows = _prediction_rows(info, out)
            _atomic_write(Path(out_dir) / f"{info.name}.predictions.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            _atomic_write(Path(out_dir) / f"{info.name}.json", json.dumps(summary, indent=2))
    return results


def read_predictions(path: Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    preds = {}
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            rec = json.loads(line)
            if "id" not in rec or "prediction" not in rec:
                raise ValueError(f"{path}:{k}: a prediction needs 'id' and 'prediction'")
            preds[str(rec["id"])] = rec["prediction"]
    return preds


def score_predictions(benchmark: str, predictions: Path | dict[str, str],
                      data_root: Path | None, *, limit: int | None = None) -> float:
    """The benchmark's metric (paper scale) for saved predictions, with the same hooks
    lm-eval used; every evaluated id must have a prediction."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from dowser.tasks import load_split

    info = get_task(benchmark)
    preds = predictions if isinstance(predictions, dict) else read_predictions(predictions)
    docs = load_split(benchmark, data_root).remove_columns("image")
    if limit is not None:
        docs = docs.select(range(min(limit, len(docs))))
    missing = [d for d in docs["id"] if d not in preds]
    if missing:
        raise ValueError(f"predictions for {benchmark} lack {len(missing)} of {len(docs)} "
                         f"ids, e.g. {missing[0]!r} ({predictions if not isinstance(predictions, dict) else 'dict'})")
    cfg = load_yaml(info.yaml_path, resolve_func=True)
    items = [cfg["process_results"](doc, [preds[doc["id"]]])[info.metric] for doc in docs]
    agg = cfg["metric_list"][0]["aggregation"]
    value = agg(items) if callable(agg) else sum(items) / len(items)
    return SCALE * float(value)


def answer_nll(model, processor, benchmark: str, data_root: Path, *, batch_size: int = 32,
               limit: int | None = None) -> tuple[float, int]:
    """(mean negative log-likelihood per answer token, answer tokens) of `benchmark`'s evaluation
    split under teacher forcing: the reference answer and its end-of-sequence token after the
    prompt, the tokens the fine-tune loss counts (`dowser.data.sft_batch`). A forgetting measure
    that keeps moving after accuracy reaches 0 (issue 10: Full-FT's upstream loss vs L).
    `limit`: the first N examples."""
    import torch
    import torch.nn.functional as F

    from dowser.data import read_rows, sft_batch

    info = get_task(benchmark)
    _check_data(info, data_root)
    rows = read_rows(local_file(info.data_name, data_root, info.split), limit)
    param = next(model.parameters())
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = sft_batch(processor, rows.iloc[start:start + batch_size])
            labels = batch.pop("labels")[:, 1:].to(param.device)
            inputs = {k: v.to(param.device, param.dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()}
            logits = model(**inputs).logits[:, :-1].float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    if not count:
        raise ValueError(f"{benchmark}: no answer tokens in {len(rows)} examples")
    return total / count, count
