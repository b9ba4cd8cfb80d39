"""The documented Python API (README): load, probe, score, mask, apply; then train a step."""

import numpy as np
import pytest
import torch

import dowser
from dowser.models import trainable_modules


@pytest.fixture(scope="module")
def world_model_dir(tmp_path_factory):
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.tokenizer import build_processor

    cfg = WorldConfig()
    processor = build_processor(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, processor)
    out = tmp_path_factory.mktemp("world-model")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_api_end_to_end(world_model_dir):
    model, processor = dowser.load_model(world_model_dir)
    probes = dowser.synthesize_probes(model, processor, n=3, seed_len=4, new_tokens=6)
    assert list(probes.columns) == ["probe_index", "seed_token_ids", "token_ids", "text", "rng_seed"]
    assert all(len(t) >= 4 for t in probes.token_ids)
    special = set(processor.tokenizer.all_special_ids)
    assert not special & {i for seeds in probes.seed_token_ids for i in seeds}

    scores = dowser.score_model(model, probes, draws=2)
    names = [m.name for m in dowser.scored_modules(model)]
    assert list(scores) == names and all((s >= 0).all() for s in scores.values())

    masks = dowser.build_masks(scores, rho=0.1)
    before = {n: dict(model.named_modules())[n].weight.detach().clone() for n in names}
    params = dowser.apply_masks(model, masks, depth=2)
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    ids = torch.tensor(probes.token_ids[0])[None]
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    last = {m.name for m in trainable_modules(model, 2)}
    for n in names:
        w = dict(model.named_modules())[n].weight.detach()
        frozen = ~torch.from_numpy(masks[n]) if n in last else torch.ones_like(w, dtype=torch.bool)
        assert torch.equal(w[frozen], before[n][frozen]), n
    assert any(not torch.equal(dict(model.named_modules())[n].weight.detach(), before[n]) for n in last)


def test_probes_are_deterministic(world_model_dir):
    model, processor = dowser.load_model(world_model_dir)
    a = dowser.synthesize_probes(model, processor, n=3, seed_len=4, new_tokens=6, seed=3)
    b = dowser.synthesize_probes(model, processor, n=2, seed_len=4, new_tokens=6, seed=3)
    assert a.token_ids[:2].tolist() == b.token_ids.tolist()  # probe k does not depend on N
    assert np.array_equal(a.rng_seed[:2], b.rng_seed)


def test_missing_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path not found"):
        dowser.load_model(tmp_path / "nope")


def test_noise_image_probes_score(world_model_dir):
    from dowser.probe import noise_image_inputs
    from dowser.score import ScoreConfig, accumulate_scores

    model, processor = dowser.load_model(world_model_dir)
    probes = dowser.synthesize_probes(model, processor, n=2, seed_len=4, new_tokens=4)
    ids, pixels = noise_image_inputs(processor, probes)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert all(row.count(image_id) == model.config.image_seq_length for row in ids)
    again = noise_image_inputs(processor, probes)[1]
    assert all(torch.equal(a, b) for a, b in zip(pixels, again))  # seeded by the probe
    stats = accumulate_scores(model, ids, [0, 1], ScoreConfig(draws=2), pixel_values=pixels)
    vision = [n for n, p in model.named_parameters() if "vision" in n]
    assert vision and all(torch.isfinite(v).all() and v.sum() > 0 for v in stats["outer"].values())


def test_load_model_takes_a_hub_name(tmp_path, monkeypatch, world_model_dir):
    """README: dowser.load_model("<owner>/<name>") resolves through the Hugging Face cache."""
    import shutil

    import huggingface_hub.constants as C

    commit = "ab" * 20
    repo = tmp_path / "hub" / "models--someone--world-llava"
    shutil.copytree(world_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert dowser.resolve_model("someone/world-llava") == repo / "snapshots" / commit
    model, _ = dowser.load_model("someone/world-llava", revision="main")
    local, _ = dowser.load_model(world_model_dir)
    assert [m.name for m in dowser.scored_modules(model)] == [m.name for m in dowser.scored_modules(local)]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), local.state_dict().values()))
