"""dowser.evaluate through lm-eval, on the miniature world's data, processor and an
untrained world model (so every answer runs to the token cap: the slowest case)."""

import json

import pytest
import torch

from dowser.evaluate import evaluate_benchmarks, read_predictions, score_predictions

N_TEST = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The miniature world's real processor, data generator and (untrained) model."""
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.tasks import generate_task_data
    from dowser.world.tokenizer import build_processor

    torch.set_num_threads(1)
    cfg = WorldConfig(upstream_train_size=1, downstream_train_size=4, validation_size=1,
                      test_size=N_TEST)
    root = tmp_path_factory.mktemp("world-data")
    generate_task_data(cfg, root)
    processor = build_processor(cfg)
    return build_model(cfg, processor).eval(), processor, root


@pytest.fixture(scope="module")
def vlm(world):
    return world[:2]


@pytest.fixture(scope="module")
def data_root(world):
    return world[2]


@pytest.fixture(scope="module")
def evaluated(vlm, data_root, tmp_path_factory):
    from dowser.tasks import WORLD_TASKS

    out = tmp_path_factory.mktemp("evals")
    res = evaluate_benchmarks(*vlm, WORLD_TASKS, data_root, batch_size=8, max_new_tokens=4,
                              out_dir=out)
    return res, out


def test_results_schema(evaluated):
    from dowser.tasks import WORLD_TASKS

    res, _ = evaluated
    assert list(res) == WORLD_TASKS
    gqa, coco = res["world-gqa"], res["world-coco"]
    assert gqa["metric"] == "exact_match" and coco["metric"] == "cider"
    assert all(r["n"] == N_TEST for r in res.values())
    assert 0.0 <= gqa["value"] <= 100.0
    # 3 closed answers: label-restricted accuracy exists for answers, not for captions
    assert 0.0 <= gqa["label_acc"] <= 100.0 and coco["label_acc"] is None
    assert gqa["examples_per_s"] > 0
    for r in res.values():
        assert {"benchmark", "metric", "value", "n", "label_acc", "examples_per_s"} <= set(r)


def test_files_written_atomically(evaluated):
    res, out = evaluated
    for name in res:
        assert json.loads((out / f"{name}.json").read_text())["value"] == res[name]["value"]
        rows = [json.loads(x) for x in (out / f"{name}.predictions.jsonl").read_text().splitlines()]
        assert len(rows) == N_TEST and {"id", "prediction", "answer"} <= set(rows[0])
    assert not list(out.glob("*.tmp"))
    rows = [json.loads(x) for x in (out / "world-count.predictions.jsonl").read_text().splitlines()]
    assert all(r["label_prediction"] in ["1", "2", "3", "4"] for r in rows)


def test_rescoring_predictions_gives_same_numbers(evaluated, data_root):
    res, out = evaluated
    for name in res:
        again = score_predictions(name, out / f"{name}.predictions.jsonl", data_root)
        assert again == pytest.approx(res[name]["value"])


def test_metric_hooks_score_perfect_predictions(data_root):
    import datasets

    docs = datasets.Dataset.from_parquet(str(data_root / "world-gqa" / "test.parquet"))
    perfect = {d["id"]: d["answer"].upper() + "." for d in docs}
    assert score_predictions("world-gqa", perfect, data_root) == 100.0
    caps = datasets.Dataset.from_parquet(str(data_root / "world-coco" / "test.parquet"))
    assert score_predictions("world-coco", {d["id"]: d["answer"] for d in caps}, data_root) > 0


def test_limit_and_offline(vlm, data_root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    res = evaluate_benchmarks(*vlm, ["world-gqa"], data_root, limit=5, max_new_tokens=2)
    assert res["world-gqa"]["n"] == 5


def _requests(processor, data_root, task, n, kind, conts=None):
    """lm-eval Instances for the first n docs of a world task, prompted as the world model
    was trained (the processor's chat template)."""
    from lm_eval.api.instance import Instance

    from dowser.tasks import load_split
    from dowser.world.tokenizer import format_prompt

    docs = load_split(task, data_root).select(range(n))
    reqs = []
    for d in docs:
        ctx = format_prompt(processor, d["question"])
        aux = {"visual": [d["image"].convert("RGB")]}
        if kind == "generate_until":
            reqs.append(Instance(kind, d, (ctx, {"until": [], "max_gen_toks": 5}, aux), 0))
        else:
            reqs += [Instance(kind, d, (ctx, c, aux), i) for i, c in enumerate(conts)]
    return reqs


@pytest.fixture(scope="module")
def lm(vlm):
    from dowser.tasks.model import InMemoryVLM

    return InMemoryVLM(*vlm, batch_size=3)


def test_generation_matches_lm_eval_parent(lm, vlm, data_root, monkeypatch):
    """Our generate_until (no per-batch gc, cached first step) returns lm-eval's strings."""
    from lm_eval.models.hf_vlms import HFMultimodalLM

    reqs = _requests(vlm[1], data_root, "world-gqa", 5, "generate_until")
    ours = lm.generate_until(reqs)
    # lm-eval passes max_length, which a generation_config's max_new_tokens overrides (the
    # world model sets 16): ours passes max_new_tokens, so max_gen_toks always holds.
    monkeypatch.setattr(vlm[0].generation_config, "max_new_tokens", None)
    assert ours == HFMultimodalLM.generate_until(lm, reqs, disable_tqdm=True)
    assert len(lm.first_step) == 5
    lm.first_step.clear()


@pytest.mark.parametrize("cached", [False, True])
def test_loglikelihood_matches_direct_forward(lm, vlm, data_root, cached):
    """Grouped, batched scoring (and the generation cache) equal a plain forward pass."""
    model, processor = vlm
    conts = [" red", " blue", " two red circles on the left"]
    reqs = _requests(processor, data_root, "world-gqa", 2, "loglikelihood", conts)
    if cached:
        lm.generate_until(_requests(processor, data_root, "world-gqa", 2, "generate_until"))
    got = lm.loglikelihood(reqs)
    lm.first_step.clear()
    for (ll, _), req in zip(got, reqs):
        ctx, cont, aux = req.args
        enc = processor(text=[ctx + cont], images=aux["visual"], return_tensors="pt")
        n = len(cont.split())
        with torch.no_grad():
            logp = model(**enc).logits.log_softmax(-1)[0]
        ids = enc["input_ids"][0]
        want = sum(float(logp[-n - 1 + k, ids[-n + k]]) for k in range(n))
        assert ll == pytest.approx(want, abs=1e-4)


def test_lm_eval_prompt_is_the_world_prompt(vlm, data_root, monkeypatch):
    """lm-eval's chat formatting of `<image>{question}` gives the world's trained prompt."""
    from dowser.tasks import load_split
    from dowser.tasks.model import InMemoryVLM
    from dowser.world.tokenizer import format_prompt

    seen = []
    real = InMemoryVLM._generate_batch

    def spy(self, args, docs=None):
        seen.extend(a[0] for a in args)
        return real(self, args, docs)

    monkeypatch.setattr(InMemoryVLM, "_generate_batch", spy)
    evaluate_benchmarks(*vlm, ["world-count"], data_root, limit=3)
    docs = load_split("world-count", data_root).select(range(3))
    assert sorted(seen) == sorted(format_prompt(vlm[1], q) for q in docs["question"])


# --- bad input: one clear line naming it ------------------------------------------------
def test_unknown_benchmark(vlm, data_root):
    with pytest.raises(ValueError, match=r"unknown benchmark 'foo'; known: world-textvqa"):
        evaluate_benchmarks(*vlm, ["world-gqa", "foo"], data_root)


def test_missing_data_root_and_split(vlm, tmp_path, data_root):
    with pytest.raises(FileNotFoundError, match="data root .*nowhere does not exist"):
        evaluate_benchmarks(*vlm, ["world-gqa"], tmp_path / "nowhere")
    (tmp_path / "world-count").mkdir()
    with pytest.raises(FileNotFoundError, match=r"world-count: split 'test' not found"):
        evaluate_benchmarks(*vlm, ["world-count"], tmp_path)


def test_predictions_with_missing_ids(tmp_path, data_root):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "world-gqa-0", "prediction": "red"}) + "\n")
    with pytest.raises(ValueError, match=r"lack 12 of 12 ids, e.g. 'world-gqa-test-00000'"):
        score_predictions("world-gqa", path, data_root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_predictions(tmp_path / "none.jsonl")


def test_answer_nll_is_the_token_weighted_mean_of_each_example_loss(vlm, data_root):
    """Batched and padded (batch 5 over 12 examples) vs one example at a time through the model's
    own loss (mean over that example's answer tokens), weighted by its answer tokens."""
    from dowser.data import read_rows, sft_batch
    from dowser.evaluate import answer_nll

    model, processor = vlm
    nll, tokens = answer_nll(model, processor, "world-gqa", data_root, batch_size=5)
    rows = read_rows(data_root / "world-gqa" / "test.parquet")
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(rows)):
            batch = sft_batch(processor, rows.iloc[i:i + 1])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    assert tokens == count > len(rows)
    assert nll == pytest.approx(total / count, rel=1e-5)
    assert answer_nll(model, processor, "world-gqa", data_root, limit=3)[1] < tokens
    with pytest.raises(FileNotFoundError, match="world-gqa: data root .*nowhere does not exist"):
        answer_nll(model, processor, "world-gqa", data_root / "nowhere")


def test_cli_refuses_a_run_other_than_the_spec_names(tmp_path, capsys):
    """`dowser evaluate --run` must hold the run its spec names (the delta's stored spec), and --run
    must be given exactly when the spec has a run: one line, no eval.json."""
    from dowser import cli
    from dowser.spec import EvalSpec, RunSpec
    from worldrun import TASK, make_world, run_spec, train

    world = make_world(tmp_path / "world")
    spec = RunSpec.from_dict(run_spec("full"))
    train(world, tmp_path / "run", spec=spec.to_dict())
    other = RunSpec.from_dict({**spec.to_dict(), "depth": 1})
    out = tmp_path / "eval"

    def evaluate(run_id, run_dir) -> str:
        ev = EvalSpec(model="m", benchmarks=(TASK,), params={"limit": 2, "max_new_tokens": 4}, run=run_id)
        argv = ["evaluate", "--spec", ev.to_json(), "--model", str(world / "model"), "--data", str(world / "data"),
                "--out", str(out)] + (["--run", str(run_dir)] if run_dir else [])
        assert cli.main(argv) == 2
        return capsys.readouterr().err.splitlines()[-1] + "\n"  # after the model loader's own warnings

    assert evaluate(other.id, tmp_path / "run") == (
        f"dowser: error: {tmp_path}/run/delta.safetensors: delta of run {spec.id} (the spec in its metadata), "
        f"not {other.id} (the run this stage's spec names)\n")
    assert evaluate(None, tmp_path / "run") == (f"dowser: error: --run {tmp_path}/run: the spec evaluates the base "
                                                "model (its run is null)\n")
    assert evaluate(spec.id, None) == (f"dowser: error: --run: the spec evaluates run {spec.id}, but no --run was "
                                       "given\n")
    assert not out.exists()


# --- resuming: a killed job keeps the benchmarks it finished -----------------------------
def _count_runs(monkeypatch, crash_on=None):
    """Spy on dowser.evaluate._run_lmeval: the benchmarks it runs; raise once on `crash_on`."""
    from dowser import evaluate

    ran, crashed, real = [], [], evaluate._run_lmeval

    def run(lm, manager, configs, limit):
        ran.append(configs[0]["task"])
        if configs[0]["task"] == crash_on and not crashed:
            crashed.append(crash_on)
            raise RuntimeError("job killed")
        return real(lm, manager, configs, limit)

    monkeypatch.setattr(evaluate, "_run_lmeval", run)
    return ran


def test_cli_rerun_after_a_crash_evaluates_only_the_missing_benchmarks(vlm, data_root, tmp_path,
                                                                      monkeypatch):
    from dowser import cli

    model, processor = vlm
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    names = ["world-gqa", "world-count", "world-coco"]
    out = tmp_path / "evals" / "abc"
    spec = {"model": "0" * 12, "benchmarks": names, "params": {"limit": 3, "max_new_tokens": 2}}
    argv = ["evaluate", "--spec", json.dumps(spec),
            "--model", str(tmp_path / "model"), "--data", str(data_root), "--out", str(out),
            "--batch-size", "4"]
    ran = _count_runs(monkeypatch, crash_on="world-count")
    with pytest.raises(RuntimeError, match="job killed"):
        cli.main(argv)
    partial = out.parent / ".abc.partial"
    assert not out.exists() and ran == ["world-gqa", "world-count"]
    kept = json.loads((partial / "world-gqa.json").read_text())
    ran.clear()
    assert cli.main(argv) == 0
    assert ran == ["world-count", "world-coco"]
    ev = json.loads((out / "eval.json").read_text())
    assert set(ev["results"]) == set(names) and ev["results"]["world-gqa"] == kept
    assert len((out / "world-gqa.predictions.jsonl").read_text().splitlines()) == 3
    assert not partial.exists() and not (out / "resume.json").exists()


def test_results_kept_under_another_key_are_evaluated_again(vlm, data_root, tmp_path, monkeypatch):
    ran = _count_runs(monkeypatch)
    kw = dict(limit=2, max_new_tokens=2, out_dir=tmp_path)
    first = evaluate_benchmarks(*vlm, ["world-gqa"], data_root, resume_key={"model": 1}, **kw)
    again = evaluate_benchmarks(*vlm, ["world-gqa"], data_root, resume_key={"model": 1}, **kw)
    assert ran == ["world-gqa"] and again == first
    (tmp_path / "world-gqa.json").write_text(json.dumps({**first["world-gqa"], "value": -1.0}))
    evaluate_benchmarks(*vlm, ["world-gqa"], data_root, resume_key={"model": 2}, **kw)
    assert ran == ["world-gqa", "world-gqa"]
    assert json.loads((tmp_path / "world-gqa.json").read_text())["value"] == first["world-gqa"]["value"]


# --- one forward per prompt, any vocabulary; a static KV cache ---------------------------
@pytest.fixture(scope="module")
def vlm32k(world):
    """The world model with LLaVA-1.5's 32,064-entry vocabulary (new rows: transformers' init)."""
    import copy

    model = copy.deepcopy(world[0])
    model.resize_token_embeddings(32064)
    assert model.config.get_text_config().vocab_size == 32064
    return model.eval(), world[1]


def _label_requests(processor, data_root, n):
    """Generation and label (one request per closed answer) Instances of the first n docs."""
    from lm_eval.api.instance import Instance

    from dowser.tasks import hooks, load_split
    from dowser.world.tokenizer import format_prompt

    gen, labels = [], []
    for d in load_split("world-gqa", data_root).select(range(n)):
        ctx = format_prompt(processor, d["question"])
        aux = {"visual": [d["image"].convert("RGB")]}
        gen.append(Instance("generate_until", d, (ctx, {"until": [], "max_gen_toks": 3}, aux), 0))
        labels += [Instance("loglikelihood", d, (ctx, " " + c, aux), i)
                   for i, c in enumerate(hooks.label_choices(d))]
    return gen, labels


def _forwards(model):
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_label_pass_at_32k_vocabulary_reuses_the_first_generated_step(vlm32k, data_root):
    from dowser.tasks.model import InMemoryVLM

    model, processor = vlm32k
    gen, labels = _label_requests(processor, data_root, 7)
    separate = InMemoryVLM(model, processor, batch_size=3)
    calls, handle = _forwards(model)
    want = separate.loglikelihood(labels)
    assert len(calls) == 3  # ceil(7 docs / 3): one forward per batch of prompts
    reused = InMemoryVLM(model, processor, batch_size=3)
    reused.generate_until(gen)
    calls.clear()
    got = reused.loglikelihood(labels)
    handle.remove()
    assert len(calls) == 0 and len(reused.first_step) == 7
    assert [c for _, c in got] == [c for _, c in want]
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in want], abs=1e-4)
    # a few floats per doc, not a vocabulary row: one per closed answer
    per_doc = [sum(1 for r in labels if r.doc["id"] == g.doc["id"]) for g in gen]
    assert sorted(len(v[1]) for v in reused.first_step.values()) == sorted(per_doc)


def test_static_cache_generates_what_the_dynamic_cache_does(vlm32k, data_root, monkeypatch):
    from transformers import StaticCache

    from dowser.tasks.model import InMemoryVLM

    model, processor = vlm32k
    gen, _ = _label_requests(processor, data_root, 7)  # prompts of several lengths: left padding
    for r in gen:
        r.arguments[1]["max_gen_toks"] = 6
    caches, real = [], model.generate

    def spy(*args, **kwargs):
        caches.append(type(kwargs.get("cache")))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    static = InMemoryVLM(model, processor, batch_size=3, static_cache=True).generate_until(gen)
    dynamic = InMemoryVLM(model, processor, batch_size=3).generate_until(gen)  # CPU: dynamic
    assert caches == [StaticCache] * 3 + [type(None)] * 3
    assert static == dynamic and len(set(static)) > 1


def test_lm_eval_label_task_at_32k_runs_no_forward_of_its_own(vlm32k, data_root, monkeypatch):
    """Through lm-eval (image references, two task loads of one split): the label task's prompts
    find their generation's first step; without it they cost ceil(6 / 4) forwards, same numbers."""
    from dowser.tasks.model import InMemoryVLM

    model, processor = vlm32k
    calls, handle = _forwards(model)
    reused = evaluate_benchmarks(model, processor, ["world-gqa"], data_root, batch_size=4, limit=6,
                                 max_new_tokens=2)["world-gqa"]
    with_reuse = len(calls)
    monkeypatch.setattr(InMemoryVLM, "_label_candidates", lambda self, ctx, doc: [])
    calls.clear()
    separate = evaluate_benchmarks(model, processor, ["world-gqa"], data_root, batch_size=4, limit=6,
                                   max_new_tokens=2)["world-gqa"]
    handle.remove()
    assert len(calls) == with_reuse + 2
    assert (reused["value"], reused["label_acc"]) == (separate["value"], separate["label_acc"])


def test_input_stamp_changes_when_a_file_is_rewritten(tmp_path):
    import os

    from dowser.evaluate import input_stamp

    (tmp_path / "model.safetensors").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()  # folders are not part of it
    before = input_stamp(tmp_path)
    assert [name for name, _, _ in before] == ["model.safetensors"] and before[0][1] == 3
    assert input_stamp(tmp_path) == before and input_stamp(None) is None
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))
    assert input_stamp(tmp_path) != before
    assert input_stamp(tmp_path / "model.safetensors") == input_stamp(tmp_path)
