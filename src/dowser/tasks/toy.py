"""A throwaway tiny LLaVA and task files in the benchmark schema, for tests and smoke runs.

    from dowser.tasks.toy import build_toy_vlm, write_toy_split
    model, processor = build_toy_vlm(words=["red", "blue"], seed=0)
    write_toy_split(tmp / "world-gqa" / "test.parquet", n=8, answers=["red", "blue"])

The model is random (untrained): it exercises shapes, batching, the chat template and the
lm-eval plumbing, not accuracy. The real miniature world lives in `dowser.world`.
The vocabulary is explicit, with the special tokens (`<image>` included) at fixed ids:
training a WordLevel tokenizer with `<image>` as a special token moved its id and broke
the embedding size (EVALUATION.md).
"""

from __future__ import annotations

import io
from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
IMAGE_TOKEN_ID = SPECIALS.index("<image>")
# USER/ASSISTANT turns like LLaVA-1.5's conversation format.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %} {% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}"
    "{% endfor %} </s> {% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
BASE_WORDS = ["USER:", "ASSISTANT:", "what", "is", "the", "colour", "shape", "of", "a", "an",
              "?", ".", ",", "A", "B", "C", "D", "answer", "with", "letter", "describe", "image"]


def build_tokenizer(words: list[str] = ()):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for w in [*BASE_WORDS, *[str(d) for d in range(10)], *words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    assert fast.convert_tokens_to_ids("<image>") == IMAGE_TOKEN_ID, "<image> id moved"
    return fast


def build_toy_vlm(words: list[str] = (), *, seed: int = 0, image_size: int = 16,
                  patch_size: int = 4, layers: int = 2):
    """Random tiny `LlavaForConditionalGeneration` + `LlavaProcessor` with a chat template."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer = build_tokenizer(words)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_resize=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, image_size=image_size, patch_size=patch_size)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model, processor


def png_bytes(seed: int, size: int = 16) -> bytes:
    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_toy_split(path: Path, n: int, answers: list[str], *, task: str = "toy",
                    question: str = "what is the colour ?", caption: bool = False,
                    seed: int = 0) -> Path:
    """A parquet in the world-task schema (image through `datasets.Image()`)."""
    import datasets

    rows = {"id": [], "image": [], "question": [], "answer": [], "references": [],
            "choices": [], "task": []}
    for i in range(n):
        ans = answers[i % len(answers)]
        rows["id"].append(f"{task}-{i}")
        rows["image"].append({"bytes": png_bytes(seed * 100003 + i), "path": None})
        rows["question"].append(question)
        rows["answer"].append(ans)
        rows["references"].append([ans, *answers[:2]] if caption else [ans])
        rows["choices"].append([] if caption else list(answers))
        rows["task"].append(task)
    features = datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(),
        "question": datasets.Value("string"), "answer": datasets.Value("string"),
        "references": datasets.Sequence(datasets.Value("string")),
        "choices": datasets.Sequence(datasets.Value("string")), "task": datasets.Value("string"),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path
