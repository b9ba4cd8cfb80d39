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
    # full: 2 tasks x 2 depths; dowser: 4; random: 3 seeds x 4
    assert len(g.runs) == 4 + 4 + 12
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
    code = "import sys, dowser.spec; from dowser.spec import build_grid; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
