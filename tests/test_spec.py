import copy
import json
import subprocess
import sys

import pytest
import yaml

from dowser.spec import RunSpec, build_grid, canonical_json, content_id

CONFIG = yaml.safe_load(open("config.yaml"))


def cfg(**changes):
    c = copy.deepcopy(CONFIG)
    for path, value in changes.items():
        node = c
        *head, last = path.split("__")
        for key in head:
            node = node[key]
        node[last] = value
    return c


def test_content_id_is_sha256_of_canonical_json():
    import hashlib

    obj = {"b": 1, "a": [0.1, "x"]}
    assert canonical_json(obj) == '{"a":[0.1,"x"],"b":1}'
    assert content_id(obj) == hashlib.sha256(b'{"a":[0.1,"x"],"b":1}').hexdigest()[:12]


def test_default_grid_shape():
    g = build_grid(CONFIG)
    # full: 2 tasks x 1 depth; dowser: 2; random: 3 seeds x 2
    assert len(g.runs) == 2 + 2 + 6
    assert len(g.evals) == len(g.runs) + 1
    assert len(g.masks) == 1 + 3
    assert {r.method for r in g.runs.values()} == {"full", "dowser", "random"}


def test_downstream_change_keeps_upstream_ids():
    a, b = build_grid(CONFIG), build_grid(cfg(finetune__train={**CONFIG["finetune"]["train"], "lr": 0.5}))
    assert a.probe.id == b.probe.id and a.score.id == b.score.id and set(a.masks) == set(b.masks)
    assert not set(a.runs) & set(b.runs)
    c = build_grid(cfg(finetune__tasks=["world-coco", "world-imagenet-r", "world-iconqa"]))
    assert set(c.masks) == set(a.masks) and set(a.runs) < set(c.runs)


def test_score_change_changes_mask_ids():
    a, b = build_grid(CONFIG), build_grid(cfg(score__draws=4))
    dowser_a = {k for k, m in a.masks.items() if m.method == "dowser"}
    dowser_b = {k for k, m in b.masks.items() if m.method == "dowser"}
    assert dowser_a != dowser_b
    assert {k for k, m in a.masks.items() if m.method == "random"} == {k for k, m in b.masks.items() if m.method == "random"}


def test_spec_roundtrip():
    run = next(iter(build_grid(CONFIG).runs.values()))
    again = RunSpec.from_dict(json.loads(run.to_json()))
    assert again.id == run.id


@pytest.mark.parametrize("changes, message", [
    ({"finetune__methods": ["full", "bogus"]}, "finetune.methods: unknown method 'bogus'"),
    ({"mask__rho": [1.0]}, "mask.rho: 1.0 is outside (0, 1)"),
    ({"mask__rho": [0.0]}, "mask.rho: 0.0 is outside (0, 1)"),
    ({"finetune__depths": [2, 9]}, "finetune.depths: L=9 is larger than the model's 6 decoder blocks"),
    ({"finetune__tasks": ["world-gqa"]}, "finetune.tasks: benchmark 'world-gqa' has no training split"),
    ({"finetune__tasks": ["world-nope"]}, "finetune.tasks: unknown benchmark 'world-nope'"),
    ({"evaluate__upstream": ["textvqa", "bogus"]}, "evaluate.upstream: unknown benchmark 'bogus'"),
])
def test_bad_grid_config(changes, message):
    with pytest.raises(ValueError) as e:
        build_grid(cfg(**changes))
    assert str(e.value).startswith(message)


def test_spec_module_imports_no_torch():
    """Snakemake imports dowser.spec (and so dowser.methods.table) on every call: stdlib only."""
    code = ("import sys, dowser.spec, dowser.config, yaml; from dowser.spec import build_grid; "
            "build_grid(yaml.safe_load(open('config.yaml'))); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'pandas', 'jsonschema'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- cache keys hold exactly what determines the artifact --------------------------------

def all_ids(grid) -> set[str]:
    ids = {grid.model.id, *grid.masks, *grid.runs, *grid.evals, *grid.scores}
    return ids | {s.id for s in (grid.data, grid.probe) if s is not None}


def test_spelling_defaults_out_changes_no_id():
    from dowser.spec import TrainConfig

    base = build_grid(CONFIG)
    defaults = {f: getattr(TrainConfig(), f) for f in ("grad_accum", "warmup_ratio", "max_grad_norm",
                                                        "mixed_precision", "subset")}
    train = {**CONFIG["finetune"]["train"], **defaults, "lr": 0.01, "epochs": 6}  # config.yaml's
    spelled = cfg(finetune__train=train, model__dtype="float32")
    assert all_ids(build_grid(spelled)) == all_ids(base)
    # numbers take the field's type before hashing: lr 1 and 1.0 are one run
    a = build_grid(cfg(finetune__train={**CONFIG["finetune"]["train"], "lr": 1}))
    b = build_grid(cfg(finetune__train={**CONFIG["finetune"]["train"], "lr": 1.0}))
    assert set(a.runs) == set(b.runs) and not set(a.runs) & set(base.runs)
    # random_seeds defaults to [0] (the random method's single seed)
    implicit = cfg()
    del implicit["finetune"]["random_seeds"]
    assert all_ids(build_grid(implicit)) == all_ids(build_grid(cfg(finetune__random_seeds=[0])))


def test_runtime_settings_are_in_no_id():
    base = build_grid(CONFIG)
    for every in (1, 50, 1000):
        other = build_grid(cfg(finetune__train={**CONFIG["finetune"]["train"], "checkpoint_every": every}))
        assert all_ids(other) == all_ids(base)
    run = next(iter(base.runs.values()))
    assert "checkpoint_every" not in run.train and run.train["grad_accum"] == 1


def test_score_shards_stay_in_the_score_id():
    # merged k=1 and k=3 files agree only to rtol 1e-5 (summation order), so they are two artifacts
    a, b = build_grid(CONFIG), build_grid(cfg(score__shards=3))
    assert a.score.id != b.score.id and a.probe.id == b.probe.id
    assert {k for k, m in a.masks.items() if m.method == "random"} == {k for k, m in b.masks.items()
                                                                       if m.method == "random"}


def test_unknown_train_key():
    with pytest.raises(ValueError, match=r"^finetune.train.checkpoint: unknown key$"):
        build_grid(cfg(finetune__train={**CONFIG["finetune"]["train"], "checkpoint": 5}))


def test_train_subset_is_random_or_first():
    from dowser.spec import TrainConfig

    assert TrainConfig().subset == "random" and TrainConfig.from_dict({"subset": "first"}).subset == "first"
    with pytest.raises(ValueError, match=r"^finetune.train.subset: 'last' is not one of random, first$"):
        build_grid(cfg(finetune__train={**CONFIG["finetune"]["train"], "subset": "last"}))
    # another rule is another run (its rows differ once the split is larger than train_samples)
    first = build_grid(cfg(finetune__train={**CONFIG["finetune"]["train"], "subset": "first"}))
    assert not set(first.runs) & set(build_grid(CONFIG).runs)


def test_train_config_roundtrip_fills_defaults():
    from dowser.spec import TrainConfig

    run = next(iter(build_grid(CONFIG).runs.values()))
    cfg_ = TrainConfig.from_dict(run.train)
    assert cfg_.spec_dict() == run.train and cfg_.checkpoint_every == TrainConfig().checkpoint_every


# --- hub models: config errors at parse time --------------------------------------------

def hub(tmp_path, **model):
    c = cfg(model={"source": "hub", "name": "llava-hf/llava-1.5-7b-hf", **model})
    c["data"] = {"root": str(tmp_path)}
    return c


def test_hub_model_needs_data_root(tmp_path):
    c = hub(tmp_path)
    del c["data"]
    with pytest.raises(ValueError, match=r"^data.root: required when model.source is 'hub'"):
        build_grid(c)


def test_missing_local_model_is_a_config_error(tmp_path):
    for name in (str(tmp_path / "nope"), "./models/nope", "~/no-such-model-dowser"):
        with pytest.raises(ValueError, match=rf"^model.name: local model folder '{name}' does not exist$"):
            build_grid(hub(tmp_path, name=name))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        build_grid(hub(tmp_path, name=str(tmp_path / "empty")))


def test_hub_revision_default_is_main(tmp_path):
    a = build_grid(hub(tmp_path)).model
    b = build_grid(hub(tmp_path, revision="main")).model
    assert a.id == b.id and a.revision == "main"


def test_model_preprocess_is_in_the_ids_it_changes(tmp_path):
    """hf (the default) keeps the ids of models specced before the key existed; llava is a new
    model id, so every probe, score, mask, run and evaluation below it is new too."""
    from dowser.spec import ModelSpec

    plain, hf = build_grid(hub(tmp_path)), build_grid(hub(tmp_path, preprocess="hf"))
    llava = build_grid(hub(tmp_path, preprocess="llava"))
    assert all_ids(plain) == all_ids(hf) and "preprocess" not in json.loads(plain.model.to_json())
    before = {k: v for k, v in json.loads(plain.model.to_json()).items() if k != "kind"}
    assert ModelSpec(**before).id == plain.model.id  # the spec as written before the field
    assert llava.model.preprocess == "llava" and json.loads(llava.model.to_json())["preprocess"] == "llava"
    assert not all_ids(llava) & all_ids(plain)
    assert ModelSpec.from_dict(json.loads(llava.model.to_json())).id == llava.model.id
    with pytest.raises(ValueError, match=r"^model.preprocess: 'llava' is for LLaVA-1.5 checkpoints; the world"):
        build_grid(cfg(model__preprocess="llava"))


# --- the method table --------------------------------------------------------------------

def test_grid_follows_the_method_table():
    from dowser.methods.table import METHODS

    for name, t in METHODS.items():
        g = build_grid(cfg(finetune__methods=[name]))
        runs = [r for r in g.runs.values() if r.method == name]
        assert runs
        masks = [m for m in g.masks.values() if m.method == name]
        assert bool(masks) == (not t.dense and not t.post_hoc), name
        assert all((r.parent is not None) == t.post_hoc for r in runs), name
        assert all((m.score is not None) == t.needs_scores for m in masks), name
        assert all((m.probe is not None) == t.needs_probes for m in masks), name
        assert (g.score is not None) == t.needs_scores, name
        assert (g.probe is not None) == (t.needs_scores or t.needs_probes), name
        assert len(masks) == (3 if t.seeded else 1 if masks else 0), name  # random_seeds: [0, 1, 2]


def test_probe_seeds_and_controls():
    """probe.seeds: one probe set, score and Dowser mask per seed, the seed in the run spec;
    dowser-top selects the top rho; oracle scores real samples of an upstream task."""
    g = build_grid(cfg(probe__seeds=[0, 1, 2], finetune__methods=["dowser", "random", "dowser-top", "oracle"],
                       finetune__tasks=["world-coco"], finetune__depths=[2]))
    runs = [r for r in g.runs.values()]
    dowser = {r.seed: r for r in runs if r.method == "dowser"}
    assert set(dowser) == {0, 1, 2} and len(g.probes) == 3
    probes = {g.scores[g.masks[r.mask].score].probe for r in dowser.values()}
    assert probes == set(g.probes) and {g.probes[p].seed for p in probes} == {0, 1, 2}
    assert {g.masks[r.mask].selection for r in runs if r.method == "dowser-top"} == {"top"}
    (oracle,) = [r for r in runs if r.method == "oracle"]
    score = g.scores[g.masks[oracle.mask].score]
    assert (score.source, score.task, score.probe) == ("task", CONFIG["evaluate"]["upstream"][0], None)
    assert g.lookup("probe", g.scores[g.masks[dowser[2].mask].score].probe).seed == 2
    # without probe.seeds: one probe set, Dowser runs carry no seed (ids as before)
    g1 = build_grid(CONFIG)
    assert len(g1.probes) == 1 and {r.seed for r in g1.runs.values() if r.method == "dowser"} == {None}
    with pytest.raises(ValueError, match="probe.seeds"):
        build_grid(cfg(probe__seeds=[1, 1]))
