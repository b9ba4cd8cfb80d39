"""Tests for dowser.models on tiny random models built from configs (no model hub).

Every vision tower below has 3 blocks and every language decoder 2, so a search that
picked the vision encoder's list would fail the block and module counts.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from torch import nn

from dowser.models import (
    ScoredModule,
    decoder_blocks,
    download_model,
    load_model,
    model_fingerprint,
    num_blocks,
    scored_modules,
    trainable_modules,
)

torch.set_num_threads(1)

VOCAB = 128
IMAGE_TOKEN = 127
TEXT = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    head_dim=8,
)
VISION = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
)
MROPE = dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]})
# q, k, v, o, gate, up, down: every family below uses a Llama-style block (transformers 5.x
# class names: LLaVA-OneVision, InternVL, Qwen3-VL, Gemma 3 and SmolVLM included).
LINEARS_PER_BLOCK = 7


def _llava():
    cfg = T.LlavaConfig(
        vision_config=T.CLIPVisionConfig(**VISION),
        text_config=T.LlamaConfig(**TEXT),
        image_token_index=IMAGE_TOKEN,
    )
    return T.LlavaForConditionalGeneration(cfg)


def _llava_next():
    cfg = T.LlavaNextConfig(
        vision_config=T.CLIPVisionConfig(**VISION),
        text_config=T.LlamaConfig(**TEXT),
        image_token_index=IMAGE_TOKEN,
    )
    return T.LlavaNextForConditionalGeneration(cfg)


def _qwen2_vl():
    vision = dict(depth=3, embed_dim=16, hidden_size=16, num_heads=2, mlp_ratio=2, patch_size=14)
    return T.Qwen2VLForConditionalGeneration(T.Qwen2VLConfig(vision_config=vision, text_config=MROPE))


def _qwen2_5_vl():
    vision = dict(
        depth=3, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
        patch_size=14, fullatt_block_indexes=[2],
    )
    cfg = T.Qwen2_5_VLConfig(vision_config=vision, text_config=MROPE)
    return T.Qwen2_5_VLForConditionalGeneration(cfg)


def _idefics3():
    cfg = T.Idefics3Config(vision_config=VISION, text_config=dict(TEXT, model_type="llama"))
    return T.Idefics3ForConditionalGeneration(cfg)


def _paligemma():
    cfg = T.PaliGemmaConfig(
        vision_config=dict(VISION, model_type="siglip_vision_model"),
        text_config=dict(TEXT, model_type="gemma"),
    )
    return T.PaliGemmaForConditionalGeneration(cfg)


def _mllama():
    # Block 1 is a cross-attention block of another class: the list is heterogeneous.
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_global_layers=1, attention_heads=2,
        image_size=28, patch_size=14, vision_output_dim=32, intermediate_layers_indices=[0],
    )
    text = dict(TEXT, pad_token_id=0, cross_attention_layers=[1])
    cfg = T.MllamaConfig(vision_config=vision, text_config=text)
    return T.MllamaForConditionalGeneration(cfg)


def _llava_onevision():
    cfg = T.LlavaOnevisionConfig(
        vision_config=dict(VISION, model_type="siglip_vision_model"),
        text_config=dict(TEXT, model_type="qwen2"),
        image_token_index=IMAGE_TOKEN,
    )
    return T.LlavaOnevisionForConditionalGeneration(cfg)


def _internvl():
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                  image_size=[28, 28], patch_size=[14, 14])
    cfg = T.InternVLConfig(vision_config=vision, text_config=dict(TEXT, model_type="qwen2"), image_token_id=IMAGE_TOKEN)
    return T.InternVLForConditionalGeneration(cfg)


QWEN3_VISION = dict(depth=3, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16, patch_size=14,
                    deepstack_visual_indexes=[1], num_position_embeddings=16)
QWEN3_TEXT = dict(TEXT, rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True})


def _qwen3_vl():
    return T.Qwen3VLForConditionalGeneration(T.Qwen3VLConfig(vision_config=QWEN3_VISION, text_config=QWEN3_TEXT))


def _gemma3():
    cfg = T.Gemma3Config(
        vision_config=dict(VISION, model_type="siglip_vision_model"),
        text_config=dict(TEXT, model_type="gemma3_text", sliding_window=8),
        mm_tokens_per_image=4,
    )
    return T.Gemma3ForConditionalGeneration(cfg)


def _smolvlm():
    cfg = T.SmolVLMConfig(vision_config=dict(VISION), text_config=dict(TEXT, model_type="llama"))
    return T.SmolVLMForConditionalGeneration(cfg)


def _llama():
    return T.LlamaForCausalLM(T.LlamaConfig(**TEXT))


LLAVA_VISION = ["model.vision_tower", "model.multi_modal_projector"]
# family -> (builder, decoder prefix, submodule names a scored module must never lie in)
FAMILIES = {
    "llava": (_llava, "model.language_model.layers", LLAVA_VISION),
    "llava_next": (_llava_next, "model.language_model.layers", LLAVA_VISION),
    "qwen2_vl": (_qwen2_vl, "model.language_model.layers", ["model.visual"]),
    "qwen2_5_vl": (_qwen2_5_vl, "model.language_model.layers", ["model.visual"]),
    "idefics3": (_idefics3, "model.text_model.layers", ["model.vision_model", "model.connector"]),
    "paligemma": (_paligemma, "model.language_model.layers", LLAVA_VISION),
    "mllama": (_mllama, "model.language_model.layers", ["model.vision_model", "model.multi_modal_projector"]),
    "llava_onevision": (_llava_onevision, "model.language_model.layers", LLAVA_VISION),
    "internvl": (_internvl, "model.language_model.layers", LLAVA_VISION),
    "qwen3_vl": (_qwen3_vl, "model.language_model.layers", ["model.visual"]),
    "gemma3": (_gemma3, "model.language_model.layers", LLAVA_VISION),
    "smolvlm": (_smolvlm, "model.text_model.layers", ["model.vision_model", "model.connector"]),
    "llama": (_llama, "model.layers", []),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    build, prefix, vision = FAMILIES[request.param]
    torch.manual_seed(0)
    return build(), prefix, vision


def _text_layers(model) -> int:
    config = model.config
    return getattr(config, "text_config", config).num_hidden_layers


def test_decoder_blocks_found_by_structure(family):
    model, prefix, _ = family
    found, blocks = decoder_blocks(model)
    assert found == prefix
    assert len(blocks) == num_blocks(model) == _text_layers(model) == 2
    assert [b is model.get_submodule(f"{prefix}.{i}") for i, b in enumerate(blocks)] == [True, True]


def test_scored_modules_are_the_decoder_linears(family):
    model, prefix, vision = family
    scored = scored_modules(model)
    assert len(scored) == num_blocks(model) * LINEARS_PER_BLOCK
    assert all(isinstance(m, ScoredModule) for m in scored)
    # Exactly the nn.Linear modules under the decoder's block list, nothing else.
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    expected = [n for n in linears if n.startswith(prefix + ".")]
    assert [m.name for m in scored] == expected
    emb_ids = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    for m in scored:
        assert m.name.startswith(f"{prefix}.{m.block}.")
        assert not any(m.name == v or m.name.startswith(v + ".") for v in vision)
        assert "lm_head" not in m.name and "embed" not in m.name
        module = model.get_submodule(m.name)
        assert isinstance(module, nn.Linear) and id(module) not in emb_ids
        assert m.shape == tuple(module.weight.shape) == (module.out_features, module.in_features)
    assert [m.block for m in scored] == sorted(m.block for m in scored)
    assert [m.block for m in scored] == [b for b in range(2) for _ in range(LINEARS_PER_BLOCK)]
    # The vision tower does hold Linear layers: excluding them is not a vacuous pass.
    for v in vision:
        if any(isinstance(x, nn.Linear) for x in model.get_submodule(v).modules()):
            break
    else:
        assert not vision


def test_trainable_modules_take_the_last_blocks(family):
    model, _, _ = family
    scored = scored_modules(model)
    last = trainable_modules(model, 1)
    assert last == [m for m in scored if m.block == 1] and len(last) == LINEARS_PER_BLOCK
    assert trainable_modules(model, 2) == scored
    with pytest.raises(ValueError, match=r"^depth L=3 is larger than the model's 2 decoder blocks$"):
        trainable_modules(model, 3)
    with pytest.raises(ValueError, match=r"depth L=0"):
        trainable_modules(model, 0)


def test_fingerprint_lists_every_scored_shape(family):
    model, _, _ = family
    fp = model_fingerprint(model)
    assert fp == {m.name: [m.shape[0], m.shape[1]] for m in scored_modules(model)}
    assert all(isinstance(v, list) for v in fp.values())


def test_no_decoder_raises_naming_the_class():
    with pytest.raises(ValueError, match=r"^cannot find the language decoder blocks of Sequential$"):
        scored_modules(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)))
    clip = T.CLIPVisionModel(T.CLIPVisionConfig(**VISION))
    with pytest.raises(ValueError, match=r"^cannot find the language decoder blocks of CLIPVisionModel$"):
        decoder_blocks(clip)
    # Token embedding but no block list.
    bag = nn.ModuleDict({"embed": nn.Embedding(10, 4), "proj": nn.Linear(4, 4)})
    with pytest.raises(ValueError, match="ModuleDict"):
        num_blocks(bag)


class _RemoteCodeVLM(nn.Module):
    """NVILA-like layout: attributes `vision_tower`, `mm_projector`, `llm`; no config, no
    get_decoder / get_input_embeddings, and a vision encoder that is a plain nn.Module
    (no `main_input_name`), so only the distance to the token embedding can tell."""

    def __init__(self):
        super().__init__()
        clip = T.CLIPVisionModel(T.CLIPVisionConfig(**VISION))
        self.vision_tower = nn.Module()  # holds an nn.Embedding too (patch positions)
        self.vision_tower.embeddings, self.vision_tower.encoder = clip.embeddings, clip.encoder
        self.mm_projector = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16))
        self.llm = _llama()


def test_structure_alone_finds_the_decoder_of_an_unknown_wrapper():
    model = _RemoteCodeVLM()
    assert not hasattr(model.vision_tower, "main_input_name")
    prefix, blocks = decoder_blocks(model)
    assert prefix == "llm.model.layers" and len(blocks) == 2
    assert len(scored_modules(model)) == 2 * LINEARS_PER_BLOCK


def test_hf_part_is_none_only_for_a_part_the_class_lacks():
    """No such method, or transformers' NotImplementedError for a class it cannot resolve: None
    (the callers search by structure). A getter failing otherwise is a bug: it propagates."""
    from dowser.models import _hf_part

    class Unresolved(T.LlamaPreTrainedModel):  # no embed_tokens / model / language_model attribute
        def __init__(self):
            super().__init__(T.LlamaConfig(**TEXT))

    class Broken(nn.Module):
        def get_input_embeddings(self):
            return self.missing_attribute

    assert _hf_part(_RemoteCodeVLM(), "get_input_embeddings") is None
    assert _hf_part(Unresolved(), "get_input_embeddings") is None
    with pytest.raises(AttributeError, match="missing_attribute"):
        _hf_part(Broken(), "get_input_embeddings")
    llama = _llama()
    assert _hf_part(llama, "get_input_embeddings") is llama.model.embed_tokens


class _Block(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.attn = nn.Linear(d, d)
        self.mlp = nn.Linear(d, d)


class _PixelEncoder(nn.Module):
    main_input_name = "pixel_values"

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([_Block() for _ in range(3)])


class _EmbeddingAtTheTop(nn.Module):
    """The text and vision lists are equally far from the embedding (and the vision list
    is longer): only recognising the vision encoder picks the right one."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(32, 8)
        self.vision = _PixelEncoder()
        self.text = nn.Module()
        self.text.layers = nn.ModuleList([_Block() for _ in range(2)])


def test_vision_encoder_is_excluded_even_when_as_close():
    prefix, blocks = decoder_blocks(_EmbeddingAtTheTop())
    assert prefix == "text.layers" and len(blocks) == 2


def test_encoder_decoder_lm_takes_the_decoder_stack():
    cfg = T.T5Config(
        vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=3, num_decoder_layers=2, num_heads=2
    )
    model = T.T5ForConditionalGeneration(cfg)
    prefix, blocks = decoder_blocks(model)
    assert prefix == "decoder.block" and len(blocks) == 2
    # self-attention q,k,v,o + cross-attention q,k,v,o + wi, wo
    assert len(scored_modules(model)) == 2 * 10


class _WithProjectionList(nn.Module):
    """Gemma-3n keeps a ModuleList of bare Linears (altup projections) beside `layers`."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(32, 8)
        self.layers = nn.ModuleList([_Block() for _ in range(2)])
        self.altup_projections = nn.ModuleList([nn.Linear(8, 8) for _ in range(5)])


def test_a_list_of_bare_linears_is_not_a_block_stack():
    model = _WithProjectionList()
    assert decoder_blocks(model)[0] == "layers"
    assert [m.name for m in scored_modules(model)][-1] == "layers.1.mlp"


class _MoEBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.experts = nn.ModuleList([nn.Sequential(nn.Linear(8, 8)) for _ in range(5)])


class _MoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(32, 8)
        self.layers = nn.ModuleList([_MoEBlock() for _ in range(2)])


def test_nested_expert_lists_stay_inside_their_block():
    model = _MoE()
    prefix, blocks = decoder_blocks(model)
    assert prefix == "layers" and len(blocks) == 2
    names = [m.name for m in scored_modules(model)]
    assert len(names) == 2 * 6 and names[1] == "layers.0.experts.0.0"


def test_fused_moe_experts_are_refused_in_one_line():
    # Qwen3-VL-MoE keeps all experts of a block in one [experts, d_out, d_in] tensor: not an
    # nn.Linear, so scoring the remaining linears would silently skip most of the decoder.
    text = dict(QWEN3_TEXT, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8, decoder_sparse_step=1)
    model = T.Qwen3VLMoeForConditionalGeneration(T.Qwen3VLMoeConfig(vision_config=QWEN3_VISION, text_config=text))
    assert decoder_blocks(model)[0] == "model.language_model.layers"
    expected = (r"^Qwen3VLMoeForConditionalGeneration is not supported: decoder weight "
                r"model\.language_model\.layers\.0\.mlp\.experts\.gate_up_proj of shape \[4, 16, 16\] is not "
                r"an nn\.Linear \(fused MoE experts\?\); Dowser scores nn\.Linear weights only$")
    for fn in (scored_modules, model_fingerprint, lambda m: trainable_modules(m, 1)):
        with pytest.raises(ValueError, match=expected):
            fn(model)


def test_masked_linears_are_still_scored_modules():
    """A parametrized (masked) weight lives outside the Linear's own parameters: not 'fused'."""
    import numpy as np

    from dowser.sparse import apply_masks

    torch.manual_seed(0)
    model = _llava()
    before = scored_modules(model)
    masks = {m.name: np.ones(m.shape, dtype=bool) for m in trainable_modules(model, 1)}
    apply_masks(model, masks, depth=1)
    assert scored_modules(model) == before


def _tokenizer(**extra):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(120)}
    vocab.update({"<unk>": 120, "<s>": 121, "</s>": 122, "<pad>": 123, "<image>": IMAGE_TOKEN})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>", **extra
    )


def test_load_model_round_trip_text_only(tmp_path):
    torch.manual_seed(0)
    model = _llama()
    model.save_pretrained(tmp_path)
    _tokenizer().save_pretrained(tmp_path)
    loaded, tok = load_model(tmp_path, dtype="bfloat16")
    assert type(loaded) is T.LlamaForCausalLM and not loaded.training
    assert model_fingerprint(loaded) == model_fingerprint(model)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    name = scored_modules(model)[0].name
    w = model.get_submodule(name).weight.to(torch.bfloat16)
    assert torch.equal(loaded.get_submodule(name).weight, w)
    assert tok("w1 w2 w5").input_ids == [1, 2, 5]


def test_load_model_round_trip_image_text(tmp_path):
    torch.manual_seed(0)
    model = _llava()
    model.save_pretrained(tmp_path)
    processor = T.LlavaProcessor(
        image_processor=T.CLIPImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        ),
        tokenizer=_tokenizer(extra_special_tokens={"image_token": "<image>"}),
        patch_size=14,
        image_token="<image>",
    )
    processor.save_pretrained(tmp_path)
    loaded, proc = load_model(str(tmp_path))
    assert type(loaded) is T.LlavaForConditionalGeneration and not loaded.training
    assert type(proc) is T.LlavaProcessor
    assert model_fingerprint(loaded) == model_fingerprint(model)
    for m in scored_modules(model):
        assert torch.equal(loaded.get_submodule(m.name).weight, model.get_submodule(m.name).weight)


def test_load_artifact_builds_inputs_as_its_spec_says(tmp_path):
    """A model folder's spec.json `preprocess` decides the processor every stage gets."""
    import json

    from dowser.models import load_artifact
    from dowser.preprocess import VICUNA_V1_SYSTEM, LlavaV1Processor

    _llava().save_pretrained(tmp_path)
    T.LlavaProcessor(image_processor=T.CLIPImageProcessor(size={"shortest_edge": 28},
                                                          crop_size={"height": 28, "width": 28}),
                     tokenizer=_tokenizer(extra_special_tokens={"image_token": "<image>"}),
                     patch_size=14, image_token="<image>").save_pretrained(tmp_path)
    assert type(load_artifact(tmp_path, device="cpu")[1]) is T.LlavaProcessor  # no spec.json: hf
    (tmp_path / "spec.json").write_text(json.dumps({"kind": "model", "source": "hub", "preprocess": "llava"}))
    proc = load_artifact(tmp_path, device="cpu")[1]
    assert type(proc) is LlavaV1Processor and type(proc.processor) is T.LlavaProcessor
    msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w1"}]}]
    want = VICUNA_V1_SYSTEM + " USER: <image>\nw1 ASSISTANT:"
    assert proc.apply_chat_template(msg, add_generation_prompt=True) == want
    (tmp_path / "spec.json").write_text(json.dumps({"kind": "model", "source": "hub", "preprocess": "crop"}))
    with pytest.raises(ValueError, match="^model.preprocess: 'crop' is not one of hf, llava$"):
        load_artifact(tmp_path, device="cpu")


def test_load_model_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as err:
        load_model(missing)
    assert str(err.value) == f"model path not found: {missing}"
    with pytest.raises(ValueError, match="dtype 'float64'"):
        load_model(tmp_path, dtype="float64")


def test_download_model_from_a_local_folder(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    model = _llama()
    model.save_pretrained(src)
    _tokenizer().save_pretrained(src)
    assert download_model({"name": str(src), "revision": None}, out) == out
    loaded, _ = load_model(out)
    assert model_fingerprint(loaded) == model_fingerprint(model)
    name = scored_modules(model)[-1].name
    assert torch.equal(loaded.get_submodule(name).weight, model.get_submodule(name).weight)
    with pytest.raises(FileNotFoundError, match="model path not found"):
        download_model({"name": str(tmp_path / "nope")}, tmp_path / "out2")


def _hub_cache(root, repo: str, revisions: dict[str, nn.Module]):
    """A Hugging Face cache holding `repo` (huggingface_hub's layout: refs/<name> -> commit,
    snapshots/<commit>/ files), one snapshot per named revision."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commits = {}
    for i, (ref, model) in enumerate(revisions.items()):
        commit = f"{i + 1:040x}"
        snap = folder / "snapshots" / commit
        model.save_pretrained(snap)
        _tokenizer().save_pretrained(snap)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
        commits[ref] = commit
    return commits


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with a private cache: nothing may reach the network."""
    import huggingface_hub.constants as C

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(cache))
    return cache


def test_load_model_resolves_a_hub_name_and_revision_through_the_cache(offline_hub):
    from dowser.models import resolve_model

    torch.manual_seed(0)
    main, v1 = _llama(), _llama()
    commits = _hub_cache(offline_hub, "tiny-org/tiny-llama", {"main": main, "v1": v1})
    name = scored_modules(main)[0].name
    assert not torch.equal(main.get_submodule(name).weight, v1.get_submodule(name).weight)
    for revision, expected in ((None, main), ("main", main), ("v1", v1), (commits["v1"], v1)):
        loaded, tok = load_model("tiny-org/tiny-llama", revision=revision)
        assert torch.equal(loaded.get_submodule(name).weight, expected.get_submodule(name).weight), revision
        assert tok("w1 w2").input_ids == [1, 2]
    folder = resolve_model("tiny-org/tiny-llama", "v1")
    assert folder.name == commits["v1"] and (folder / "config.json").exists()


def test_load_model_passes_trust_remote_code_and_revision(offline_hub, monkeypatch):
    """The arguments reach from_pretrained for the resolved snapshot folder."""
    calls = []
    real = T.AutoModelForImageTextToText.from_pretrained

    def record(path, **kwargs):
        calls.append((str(path), kwargs))
        return real(path, **kwargs)

    monkeypatch.setattr(T.AutoModelForImageTextToText, "from_pretrained", record)
    commits = _hub_cache(offline_hub, "tiny-org/tiny-llava", {"main": _llava()})
    load_model("tiny-org/tiny-llava", revision="main", dtype="bfloat16", trust_remote_code=True)
    ((path, kwargs),) = calls
    assert path.endswith(f"snapshots/{commits['main']}")
    assert kwargs == dict(dtype=torch.bfloat16, use_safetensors=True, trust_remote_code=True)


def test_hub_name_errors_are_one_line(offline_hub, tmp_path):
    _hub_cache(offline_hub, "tiny-org/tiny-llama", {"main": _llama()})
    with pytest.raises(FileNotFoundError) as err:
        load_model("nobody/no-such-model")
    assert str(err.value) == (
        "hub model nobody/no-such-model is not in the local Hugging Face cache and the hub cannot be "
        "reached (offline or HF_HUB_OFFLINE=1); fetch it on a node with network first"
    )
    with pytest.raises(FileNotFoundError, match=r"^hub model tiny-org/tiny-llama@v9 is not in the local"):
        load_model("tiny-org/tiny-llama", revision="v9")
    # Not a repository id, or path-like: never sent to the hub.
    for bad in ("a/b/c", "./tiny-org/tiny-llama", "bad name"):
        with pytest.raises(FileNotFoundError) as err:
            load_model(bad)
        assert str(err.value) == f"model path not found: {bad}"
    folder = tmp_path / "local"
    _llama().save_pretrained(folder)
    with pytest.raises(ValueError, match="only hub names have revisions"):
        load_model(folder, revision="main")
