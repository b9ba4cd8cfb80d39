"""Continual learning (Appendix H): chain spec ids, the A_{t,i} table, a tiny real run."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from dowser.continual import StepModelSpec, accuracy_matrix, build_continual, metrics_table
from dowser.spec import model_spec

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
TASKS = ["world-coco", "world-imagenet-r"]


def cfg(**continual):
    c = copy.deepcopy(CONFIG)
    c["continual"] = {"tasks": TASKS, "methods": ["full", "dowser"], "depth": 2, "rho": 0.1, **continual}
    return c


def grid(c):
    return build_continual(c, model_spec(c))


def chain(g, label):
    return [g.runs[r] for r in g.chains[label]]


def test_each_step_names_the_previous_run_and_its_start_model():
    g = grid(cfg())
    base = model_spec(cfg()).id
    for label in ("full", "dowser"):
        r1, r2 = chain(g, label)
        assert (r1.step, r1.previous, r1.model, r1.task) == (1, None, base, TASKS[0])
        assert (r2.step, r2.previous, r2.task) == (2, r1.id, TASKS[1])
        after = g.models[r2.model]  # the model step 2 starts from: base + step 1's delta
        assert after == StepModelSpec(model=base, run=r1.id, dtype="float32")
        assert json.loads(r2.to_json())["previous"] == r1.id
    # one zero-shot evaluation, one per step; upstream benchmarks at the last step only
    assert len(g.evals) == 1 + 2 * 2
    last = [e for e in g.evals.values() if e.run == chain(g, "full")[1].id][0]
    assert set(CONFIG["evaluate"]["upstream"]) < set(last.benchmarks) and set(TASKS) < set(last.benchmarks)
    first = [e for e in g.evals.values() if e.run == chain(g, "full")[0].id][0]
    assert first.benchmarks == tuple(TASKS)


def test_step_models_load_their_inputs_as_the_base_model(tmp_path):
    """A step model's folder is read with the base model's preprocess (its spec.json says so)."""
    c = cfg(tasks=["coco-caption", "imagenet-r"])
    c["model"] = {"source": "hub", "name": "llava-hf/llava-1.5-7b-hf", "preprocess": "llava"}
    c["data"] = {"root": str(tmp_path)}
    c["finetune"]["tasks"] = ["coco-caption"]
    c["evaluate"].update(upstream=["gqa"], downstream=["coco-caption", "imagenet-r"])
    models = grid(c).models.values()
    assert models and all(m.preprocess == "llava" and json.loads(m.to_json())["preprocess"] == "llava"
                          for m in models)
    assert all("preprocess" not in json.loads(m.to_json()) for m in grid(cfg()).models.values())



def test_a_change_upstream_in_the_chain_changes_every_later_step():
    g0 = grid(cfg())
    lr = grid(cfg(train={"lr": 0.02}))
    later = grid(cfg(tasks=[TASKS[0], "world-flickr"]))
    for label in ("full", "dowser"):
        a, b, c = chain(g0, label), chain(lr, label), chain(later, label)
        assert a[0].id != b[0].id and a[1].id != b[1].id  # the recipe is in every step
        assert a[0].id == c[0].id and a[1].id != c[1].id  # a later task leaves step 1 alone


def test_mask_recompute_scores_each_start_model_keep_reuses_the_base_mask():
    base = model_spec(cfg()).id
    rec = grid(cfg(mask="recompute"))
    r1, r2 = chain(rec, "dowser")
    m1, m2 = rec.masks[r1.mask], rec.masks[r2.mask]
    assert m1.model == base and m2.model == r2.model != base
    assert rec.probes[rec.scores[m2.score].probe].model == r2.model
    assert (r1.mask_mode, chain(rec, "full")[0].mask) == ("recompute", None)
    keep = grid(cfg(mask="keep"))
    k1, k2 = chain(keep, "dowser-keep")
    assert k1.mask == k2.mask and keep.masks[k1.mask].model == base and len(keep.scores) == 1
    assert k1.mask == r1.mask and k1.mask_mode == "keep"
    assert grid(cfg()).runs == rec.runs  # recompute is the default (what App. H implies)
    both = grid(cfg(mask=["recompute", "keep"]))
    assert set(both.chains) == {"full", "dowser", "dowser-keep"}
    assert both.chains["dowser"] == rec.chains["dowser"] and both.chains["dowser-keep"] == keep.chains["dowser-keep"]


def test_random_gets_a_chain_per_seed_and_the_recipe_is_the_main_grids():
    from dowser.spec import build_grid

    c = cfg(methods=["random", "lora"], random_seeds=[0, 1], train={"lr": 0.02}, mask=["recompute", "keep"])
    g = grid(c)
    assert set(g.chains) == {"random-seed0", "random-seed1", "lora"}  # a random mask is the same on any model
    r = chain(g, "random-seed1")
    assert r[0].mask == r[1].mask and g.masks[r[1].mask].seed == 1 and r[1].mask_mode is None
    c["finetune"]["train"]["lr"] = 0.02
    main_run = next(iter(build_grid(c).runs.values()))
    assert all(x.train == main_run.train for x in g.runs.values())  # defaults filled as the main grid does


@pytest.mark.parametrize("change, message", [
    ({"tasks": ["world-coco"]}, "continual.tasks: a sequence needs at least 2 tasks"),
    ({"tasks": ["world-coco", "world-coco"]}, "continual.tasks: a task appears twice"),
    ({"tasks": ["world-coco", "world-gqa"]}, "continual.tasks: benchmark 'world-gqa' has no training split"),
    ({"methods": ["dare"]}, "continual.methods: 'dare' is post-hoc"),
    ({"methods": ["sgd"]}, "continual.methods: unknown method 'sgd'"),
    ({"mask": "sometimes"}, "continual.mask: 'sometimes' is not one of recompute, keep"),
    ({"depth": 7}, "continual.depth: L=7 is outside 1..6"),
    ({"rho": 1.5}, "continual.rho: 1.5 is outside (0, 1)"),
])
def test_bad_config_is_one_line(change, message):
    with pytest.raises(ValueError) as e:
        grid(cfg(**change))
    assert str(e.value).startswith(message)


def fake_docs(values: dict, upstream: dict, zero: dict, zero_up: float):
    """eval.json documents: values[label][t] = [A_{t,1}, A_{t,2}, A_{t,3}]."""
    tasks = ["world-coco", "world-flickr", "world-iconqa"]
    docs = [{"eval": {"run": None}, "run": None,
             "results": {**{t: {"metric": "m", "value": v} for t, v in zip(tasks, zero)},
                         "world-gqa": {"metric": "acc", "value": zero_up}}}]
    for label, rows in values.items():
        for t, row in enumerate(rows, start=1):
            res = {task: {"metric": "m", "value": v} for task, v in zip(tasks, row)}
            if t == len(rows):
                res["world-gqa"] = {"metric": "acc", "value": upstream[label]}
            run = {"kind": "continual_run", "method": label, "task": tasks[t - 1], "step": t, "rho": None,
                   "seed": None, "mask_mode": None}
            docs.append({"eval": {"run": f"{label}{t}"}, "run": run, "results": res})
    return docs


def test_metric_table_against_hand_computed_values():
    values = {"full": [[80, 10, 5], [40, 90, 6], [20, 30, 70]],
              "dowser": [[60, 12, 5], [55, 70, 8], [50, 60, 65]]}
    matrix, up = accuracy_matrix(fake_docs(values, {"full": 30.0, "dowser": 60.0}, [1, 2, 3], 90.0))
    assert len(matrix) == 2 * (3 + 1) * 3  # per label: steps 0..3 x 3 tasks
    row = matrix[(matrix.label == "dowser") & (matrix.t == 2) & (matrix.i == 1)].iloc[0]
    assert (row.value, row.task_t, row.task_i) == (55, "world-flickr", "world-coco")
    m = metrics_table(matrix, up).set_index("label")
    for label, A in values.items():
        mft = (A[0][0] + A[1][1] + A[2][2]) / 3
        mfn = sum(A[2]) / 3
        maa = (A[0][0] + (A[1][0] + A[1][1]) / 2 + sum(A[2]) / 3) / 3
        bwt = ((A[2][0] - A[0][0]) + (A[2][1] - A[1][1])) / 2
        got = m.loc[label]
        assert got.MFT == pytest.approx(mft) and got.MFN == pytest.approx(mfn) and got.A_down == pytest.approx(mfn)
        assert got.MAA == pytest.approx(maa) and got.BWT == pytest.approx(bwt)
        a_up = {"full": 30.0, "dowser": 60.0}[label]
        assert got.A_up == a_up and got.H == pytest.approx(2 * a_up * mfn / (a_up + mfn))
    assert m.loc["full"].BWT == pytest.approx(-60.0) and m.loc["dowser"].BWT == pytest.approx(-10.0)
    zero = m.loc["zero-shot"]
    assert (zero.A_up, zero.A_down) == (90.0, 2.0)


def test_metric_table_refuses_a_broken_sequence():
    docs = fake_docs({"full": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "dowser": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]},
                     {"full": 1.0, "dowser": 1.0}, [0, 0, 0], 1.0)
    docs[5]["run"]["task"] = "world-iconqa"  # dowser's step 2 is not full's step 2
    with pytest.raises(ValueError, match="do not form one task sequence"):
        accuracy_matrix(docs)


# --- a tiny real run: random-init world model, 2 tasks, 2 steps per method, CLI stages -------------
@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    import torch

    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.tasks import generate_task_data
    from dowser.world.tokenizer import build_processor

    root = tmp_path_factory.mktemp("continual")
    wcfg = WorldConfig(upstream_train_size=8, downstream_train_size=16, validation_size=4, test_size=4)
    generate_task_data(wcfg, root / "data")
    processor = build_processor(wcfg)
    torch.manual_seed(0)
    model = build_model(wcfg, processor)
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    return root


def tiny_config(**continual):
    c = cfg(**continual)
    c["probe"].update(n=2, seed_len=2, new_tokens=4, image="none")
    c["score"].update(draws=1)
    c["finetune"]["train"] = {"lr": 1e-2, "epochs": 1, "batch_size": 8, "train_samples": 16, "seed": 0}
    c["evaluate"].update(upstream=["world-count"], limit=4, max_new_tokens=4)
    return c


def execute(g, root: Path) -> list[Path]:
    """Every stage of the continual grid through the `dowser` CLI, in chain order (the rules' commands)."""
    from dowser.cli import main

    base_id = g.base.id

    def model_dir(mid):
        return root / "base" if mid == base_id else root / "models" / mid

    def cli(*args):
        assert main([str(a) for a in args]) == 0, args

    data, evals = root / "data", []
    for label, run_ids in g.chains.items():
        for rid in run_ids:
            run = g.runs[rid]
            mask_args = []
            if run.mask:
                mask = g.masks[run.mask]
                score = g.scores[mask.score]
                probe = g.probes[score.probe]
                m = model_dir(mask.model)
                pdir = root / "probes" / probe.id
                if not pdir.exists():
                    cli("probe", "--spec", probe.to_json(), "--model", m, "--out", pdir)
                    shard = root / "scores" / score.id / "shard-0-of-1.h5"
                    cli("score", "--spec", score.to_json(), "--model", m, "--probes", pdir / "probes.parquet",
                        "--shard", 0, "--out", shard)
                    cli("merge", "--spec", score.to_json(), "--shards", shard,
                        "--out", root / "scores" / score.id / "scores.h5")
                    cli("mask", "--spec", mask.to_json(), "--scores", root / "scores" / score.id / "scores.h5",
                        "--out", root / "masks" / mask.id / "mask.h5")
                mask_args = ["--mask", root / "masks" / mask.id / "mask.h5"]
            cli("finetune", "--spec", run.to_json(), "--model", model_dir(run.model), "--data", data,
                *mask_args, "--out", root / "runs" / rid)
            after = [s for s in g.models.values() if s.run == rid]
            if after:
                cli("continual", "model", "--spec", after[0].to_json(), "--model", model_dir(run.model),
                    "--run", root / "runs" / rid, "--out", model_dir(after[0].id))
    for eid, ev in g.evals.items():
        run_args = ["--run", root / "runs" / ev.run] if ev.run else []
        cli("evaluate", "--spec", ev.to_json(), "--model", model_dir(ev.model), "--data", data, *run_args,
            "--out", root / "evals" / eid)
        evals.append(root / "evals" / eid / "eval.json")
    return evals


@pytest.mark.slow  # ~1 min on one core: data, 4 fine-tunes, 2 Dowser masks, 5 lm-eval evaluations
def test_tiny_run_tables_and_step_models(tiny_world, tmp_path):
    import pandas as pd
    import torch

    from dowser.cli import main
    from dowser.finetune import load_finetuned
    from dowser.models import load_artifact

    root = tmp_path / "w"
    shutil.copytree(tiny_world, root)
    c = tiny_config()
    g = build_continual(c, model_spec(c))
    evals = execute(g, root)

    # the model after step 1 is base + step 1's delta, bit for bit, and step 2 trained on top of it
    for label in ("full", "dowser"):
        r1, r2 = g.chains[label]
        step_model = g.runs[r2].model
        after, _ = load_artifact(root / "models" / step_model, device="cpu")
        ref, _ = load_finetuned(root / "base", root / "runs" / r1)
        base, _ = load_artifact(root / "base", device="cpu")
        a, r, b = after.state_dict(), ref.state_dict(), base.state_dict()
        assert all(torch.equal(a[k], r[k]) for k in r)
        assert any(not torch.equal(a[k], b[k]) for k in b)
        spec = json.loads((root / "runs" / r2 / "spec.json").read_text())
        assert spec["previous"] == r1 and spec["model"] == step_model and spec["kind"] == "continual_run"

    assert main(["continual", "table", "--evals", *map(str, evals), "--out", str(root / "tables")]) == 0
    matrix = pd.read_parquet(root / "tables" / "matrix.parquet")
    metrics = pd.read_parquet(root / "tables" / "metrics.parquet").set_index("label")
    assert set(metrics.index) == {"zero-shot", "full", "dowser"}
    for label in ("full", "dowser"):
        docs = {json.loads(Path(e).read_text())["eval"]["run"]: json.loads(Path(e).read_text()) for e in evals}
        A = [[docs[g.chains[label][t]]["results"][task]["value"] for task in TASKS] for t in range(2)]
        got = matrix[(matrix.label == label) & (matrix.t > 0)].sort_values(["t", "i"]).value.tolist()
        assert got == [A[0][0], A[0][1], A[1][0], A[1][1]]
        assert metrics.loc[label].BWT == pytest.approx(A[1][0] - A[0][0])
        assert metrics.loc[label].MFT == pytest.approx((A[0][0] + A[1][1]) / 2)
        up = docs[g.chains[label][1]]["results"]["world-count"]["value"]
        assert metrics.loc[label].A_up == pytest.approx(up)


def test_workflow_builds_the_chain(tmp_path):
    """snakemake -n: one fine-tune, evaluation and (Dowser) mask per step; step models between steps."""
    from workflowlib import copy_workflow, job_counts, run

    copy_workflow(tmp_path)
    extra = tmp_path / "continual.yaml"
    extra.write_text(yaml.safe_dump({"continual": cfg()["continual"]}))
    out = run(["snakemake", "-n", "continual", "--cores", "1", "--configfile", str(extra)], tmp_path).stdout
    counts = job_counts(out)
    assert counts["continual_finetune"] == 4 and counts["continual_evaluate"] == 4 + 1  # + zero-shot
    assert counts["continual_model"] == 2 and counts["continual_mask"] == 2 and counts["continual_table"] == 1
    assert counts["continual_probe"] == 2 and counts.get("finetune", 0) == 0
