"""Find the language decoder of a (multimodal) LLM and the linear weights Dowser scores.

    from dowser.models import download_model, load_model, scored_modules, trainable_modules
    download_model({"name": "llava-hf/llava-1.5-7b-hf", "revision": None}, "/models/llava")
    model, processor = load_model("/models/llava", dtype="bfloat16")
    model, processor = load_model("llava-hf/llava-1.5-7b-hf", revision="main")  # via the HF cache
    for m in trainable_modules(model, depth=20):   # the last 20 decoder blocks
        print(m.block, m.name, m.shape)

docs/method.md §1: the scored modules are every `nn.Linear` inside the language decoder's
transformer blocks; embeddings, lm_head, norms, the vision tower and the projector are
not scored. §3: only the last L blocks are fine-tuned.

The decoder is found by structure, not by a list of attribute names. A language decoder
reads token embeddings, so:

1. The token embedding is `model.get_input_embeddings()` when that is an `nn.Embedding`
   (a vision-only model answers with a patch Conv2d: it has no language decoder);
   without that method, the largest `nn.Embedding` in the model.
2. Candidate block lists are the `nn.ModuleList`s whose children each hold (and are not
   themselves) an `nn.Linear`, outside any vision encoder (a submodule whose
   config is of the model's `vision_config` class, or whose `main_input_name` is
   `pixel_values`).
3. The decoder's blocks are the candidate closest to the token embedding in the module
   tree (fewest steps down from their lowest common ancestor to the list): in
   `LlamaModel` the embedding and `layers` are siblings, while a vision tower's layers sit
   several levels down another branch, and an MoE expert list nested inside a block is
   always farther than the block list itself. Ties go to the longer list.

`model.get_decoder()`, when it returns a proper submodule holding a candidate, only
narrows the search (an encoder-decoder LM's two stacks are equally close to their shared
embedding); remote-code models (e.g. NVILA's `llm`) need no such method.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig

# The dtypes a checkpoint is loaded in (docs/method.md §1: scores accumulate in fp32 whatever
# the model's dtype, so bf16/fp16 models are fine to score).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files a checkpoint folder needs: load_model reads safetensors only; *.py is remote code
# (NVILA); subfolders (NVILA's llm/, vision_tower/) match too, as fnmatch's * spans "/".
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class ScoredModule:
    """One scored linear map z = W h of the language decoder (docs/method.md §1)."""

    block: int  # index of the decoder block (0-based, in order)
    name: str  # full dotted name in model.named_modules()
    shape: tuple[int, int]  # (d_out, d_in) of the weight


def _hf_part(model: nn.Module, getter: str):
    """`model.<getter>()` (transformers' get_input_embeddings / get_decoder), or None for a model
    that does not define that part: a plain nn.Module without the method (remote-code wrappers such
    as NVILA's), or a PreTrainedModel whose class transformers' base get_input_embeddings cannot
    resolve (it raises NotImplementedError; get_decoder never raises). The callers then search the
    module tree by structure. Any other error is a bug in the model's getter and propagates."""
    fn = getattr(model, getter, None)
    if not callable(fn):
        return None
    try:
        return fn()
    except NotImplementedError:
        return None


def _token_embedding(model: nn.Module) -> tuple[str, nn.Embedding] | None:
    """(dotted name, module) of the token embedding, or None for a model without one."""
    names = {id(mod): name for name, mod in model.named_modules()}
    emb = _hf_part(model, "get_input_embeddings")
    if emb is not None:
        # A vision-only model's "input embedding" is a patch Conv2d: no tokens, no decoder.
        if not isinstance(emb, nn.Embedding) or id(emb) not in names:
            return None
        return names[id(emb)], emb
    embeddings = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if not embeddings:
        return None
    return max(embeddings, key=lambda nm: nm[1].num_embeddings)


def _vision_roots(model: nn.Module) -> list[str]:
    """Dotted names of the proper submodules that are vision encoders."""
    vision_config = getattr(getattr(model, "config", None), "vision_config", None)
    roots = []
    for name, mod in model.named_modules():
        if not name:
            continue
        config = getattr(mod, "config", None)
        is_vision_config = isinstance(vision_config, PretrainedConfig) and type(config) is type(vision_config)
        is_pixel_model = str(getattr(mod, "main_input_name", "")).startswith("pixel_values")
        if is_vision_config or is_pixel_model:
            roots.append(name)
    return roots


def _is_block_list(mod: nn.Module) -> bool:
    # A block holds Linear layers; a list of bare Linears (Gemma-3n's altup projections)
    # is not a stack of blocks. Classes may differ: Mllama interleaves cross-attention blocks.
    if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
        return False
    return all(
        not isinstance(block, nn.Linear) and any(isinstance(m, nn.Linear) for m in block.modules())
        for block in mod
    )


def _inside(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _search_root(model: nn.Module) -> str:
    """Prefix of the subtree to search: `get_decoder()` when it is a proper submodule,
    else the whole model."""
    decoder = _hf_part(model, "get_decoder")
    if decoder is None or decoder is model or not isinstance(decoder, nn.Module):
        return ""
    for name, mod in model.named_modules():
        if mod is decoder:
            return name
    return ""


def _steps_below_common_ancestor(name: str, other: str) -> int:
    a, b = name.split("."), other.split(".")
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    return len(a) - common


def decoder_blocks(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """(dotted prefix of the language decoder's block ModuleList, its blocks in order)."""
    found = _token_embedding(model)
    if found is None:
        raise ValueError(f"cannot find the language decoder blocks of {type(model).__name__}")
    emb_name = found[0]
    excluded = _vision_roots(model)
    lists: dict[str, nn.ModuleList] = {}
    for name, mod in model.named_modules():
        if name and _is_block_list(mod) and not any(_inside(name, v) for v in excluded):
            lists[name] = mod
    root = _search_root(model)
    # An encoder-decoder LM shares one embedding between both stacks: get_decoder() decides.
    lists = {n: m for n, m in lists.items() if _inside(n, root)} or lists
    if not lists:
        raise ValueError(f"cannot find the language decoder blocks of {type(model).__name__}")
    best = min(lists, key=lambda n: (_steps_below_common_ancestor(n, emb_name), -len(lists[n])))
    return best, list(lists[best])


def num_blocks(model: nn.Module) -> int:
    return len(decoder_blocks(model)[1])


def _unscorable_matrix(block: nn.Module) -> tuple[str, tuple[int, ...]] | None:
    """(name, shape) of a matrix parameter of a block that no nn.Linear owns, or None.

    Fused MoE experts (Qwen3-VL-MoE, recent Mixtral/DeepSeek ports keep every expert in one
    [experts, d_out, d_in] tensor) and GPT-2's Conv1D hold weights that are not nn.Linear:
    scoring only the remaining linears would silently leave most of the block out.
    Embedding tables inside a block (T5's relative position bias) are not maps z = W h.
    """
    # recursively: a masked Linear keeps its weight in parametrizations.weight.original
    owned = {id(p) for mod in block.modules() if isinstance(mod, (nn.Linear, nn.Embedding)) for p in mod.parameters()}
    for name, p in block.named_parameters():
        if p.dim() >= 2 and id(p) not in owned:
            return name, tuple(p.shape)
    return None


def scored_modules(model: nn.Module) -> list[ScoredModule]:
    """Every nn.Linear inside the decoder blocks, in (block, registration) order.

    Raises ValueError for a decoder whose blocks hold matrix weights outside nn.Linear
    (fused MoE experts): Dowser scores and masks nn.Linear weights only."""
    prefix, blocks = decoder_blocks(model)
    out = []
    for i, block in enumerate(blocks):
        fused = _unscorable_matrix(block)
        if fused is not None:
            raise ValueError(
                f"{type(model).__name__} is not supported: decoder weight {prefix}.{i}.{fused[0]} of shape "
                f"{list(fused[1])} is not an nn.Linear (fused MoE experts?); Dowser scores nn.Linear weights only"
            )
        for sub, mod in block.named_modules():
            if isinstance(mod, nn.Linear):
                # a masked weight's shape from W0, not by computing W0 + delta (a copy; under FSDP W0 may be a shard)
                d_out, d_in = _unparametrized(mod).shape
                out.append(ScoredModule(i, f"{prefix}.{i}.{sub}", (int(d_out), int(d_in))))
    return out


def _unparametrized(mod: nn.Module):
    from torch.nn.utils import parametrize

    return mod.parametrizations.weight.original if parametrize.is_parametrized(mod, "weight") else mod.weight


def trainable_modules(model: nn.Module, depth: int) -> list[ScoredModule]:
    """The scored modules of the last `depth` decoder blocks (docs/method.md §3: last L layers)."""
    n = num_blocks(model)
    if depth < 1:
        raise ValueError(f"depth L={depth} must be at least 1")
    if depth > n:
        raise ValueError(f"depth L={depth} is larger than the model's {n} decoder blocks")
    return [m for m in scored_modules(model) if m.block >= n - depth]


def model_fingerprint(model: nn.Module) -> dict[str, list[int]]:
    """{scored module name: [d_out, d_in]}: checks that a score or mask file fits a model."""
    return {m.name: list(m.shape) for m in scored_modules(model)}


def resolve_model(name: str | Path, revision: str | None = None) -> Path:
    """The local folder of a model: `name` itself when it is a checkpoint folder, else the
    snapshot of hub repository `name` at `revision` in the Hugging Face cache (downloaded,
    checkpoint files only, unless already cached; HF_HUB_OFFLINE=1 reads the cache only).

    A Path, or a name that looks like a path (starts with '.', '/' or '~', or is not a valid
    'owner/name' repository id), is never sent to the hub: FileNotFoundError in one line.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        if revision is not None:
            raise ValueError(f"revision {revision!r} given for the local folder {name}: only hub names have revisions")
        return local
    text = str(name)
    if isinstance(name, Path) or local.exists() or text.startswith((".", "/", "~")) or not _is_repo_id(text):
        raise FileNotFoundError(f"model path not found: {name}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    at = f"@{revision}" if revision else ""
    try:
        return Path(snapshot_download(repo_id=text, revision=revision, allow_patterns=CHECKPOINT_FILES))
    except RevisionNotFoundError:
        raise FileNotFoundError(f"hub model {text} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"hub model not found: {text} (no such repository, or a private/gated one: log in with `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"hub model {text}{at} is not in the local Hugging Face cache and the hub cannot be reached "
            "(offline or HF_HUB_OFFLINE=1); fetch it on a node with network first"
        ) from None


def _is_repo_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def load_model(
    name: str | Path,
    revision: str | None = None,
    *,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    device: str = "cpu",
    empty: bool = False,
    preprocess: str = "hf",
):
    """Load a checkpoint folder or a hub model -> (model in eval mode, processor or tokenizer).

    `name`: a local folder, or a hub name such as "llava-hf/llava-1.5-7b-hf" resolved at
    `revision` through the Hugging Face cache (`resolve_model`). Image-text models load
    through AutoModelForImageTextToText; a config that class does not know (a text-only LLM)
    falls back to AutoModelForCausalLM. Only safetensors are read (no pickle).
    `trust_remote_code` runs the checkpoint's own *.py (e.g. NVILA): off unless asked.
    `empty`: read no weights; parameters on the meta device, buffers real (FSDP ranks > 0: accelerate
    broadcasts rank 0's weights into the shards, `dowser.distributed.loads_on_rank0`).
    `preprocess`: "llava" wraps the processor as LLaVA-1.5's own code builds inputs (`dowser.preprocess`).
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    from dowser.preprocess import PREPROCESS, prepare_processor

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if preprocess not in PREPROCESS:
        raise ValueError(f"model.preprocess: '{preprocess}' is not one of {', '.join(PREPROCESS)}")
    path = resolve_model(name, revision)
    kwargs = dict(dtype=DTYPES[dtype], use_safetensors=True, trust_remote_code=trust_remote_code)

    def build(auto):
        if not empty:
            return auto.from_pretrained(path, **kwargs)
        from accelerate import init_empty_weights
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        with init_empty_weights(include_buffers=False):  # buffers computed by __init__ (rotary, positions)
            return auto.from_config(config, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)

    try:
        model = build(AutoModelForImageTextToText)
    except ValueError as err:
        # "Unrecognized configuration class ... for this kind of AutoModel": text-only.
        if "Unrecognized configuration class" not in str(err):
            raise
        model = build(AutoModelForCausalLM)
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError):
        processor = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not empty:
        model.to(device)
    model.eval()
    return model, prepare_processor(processor, preprocess)


def download_model(spec: dict, out: str | Path) -> Path:
    """Materialise the base model of a 'hub' model spec (keys `name`, `revision`) as the
    local folder `out`: a local `name` is copied (not linked: a later save_pretrained into
    the source rewrites its files in place, which would change a cached base model); a hub
    name is fetched with huggingface_hub at `revision`, checkpoint files only."""
    name, revision, out = spec["name"], spec.get("revision"), Path(out)
    local = Path(name).expanduser()
    if local.is_dir():
        shutil.copytree(local, out, ignore=shutil.ignore_patterns(".*"))
    elif local.exists() or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model path not found: {name} (a checkpoint folder or a hub name)")
    else:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id=name, revision=revision, local_dir=out, allow_patterns=CHECKPOINT_FILES)
        shutil.rmtree(out / ".cache", ignore_errors=True)
    if not (out / "config.json").exists():
        raise FileNotFoundError(f"no config.json in the model folder {name}")
    return out


def load_artifact(path: str | Path, device: str | None = None, empty: bool = False):
    """Load a pipeline base model folder with the dtype, trust_remote_code and preprocess of its
    spec.json (written by the model stage); device: cuda when available unless given; `empty`: see
    load_model."""
    import json

    import torch

    path = Path(path)
    spec_file = path / "spec.json"
    spec = json.loads(spec_file.read_text()) if spec_file.exists() else {}
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(path, dtype=spec.get("dtype", "float32"), device=device, empty=empty,
                      trust_remote_code=bool(spec.get("trust_remote_code", False)),
                      preprocess=spec.get("preprocess", "hf"))
