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

    def spy(self, args):
        seen.extend(a[0] for a in args)
        return real(self, args)

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
