"""Word-level tokenizer and LlavaProcessor of the miniature world.

    from dowser.world.tokenizer import build_processor, format_prompt
    processor = build_processor(WorldConfig())
    prompt = format_prompt(processor, "how many objects are there ?")
    # "<s> <image> how many objects are there ? <sep>"; the answer follows, then </s>.

Special tokens sit at fixed ids (SPECIAL_TOKENS order), then every word of every task.
"""

from __future__ import annotations

from dowser.world.config import WorldConfig
from dowser.world.tasks import vocabulary

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>", "<sep>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID, IMAGE_ID, SEP_ID = range(len(SPECIAL_TOKENS))
# CLIP normalisation constants (openai/clip-vit-base-patch32 preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The user turn ends with <sep>; the assistant's answer follows and ends with </s>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ bos_token }}"
    "{% if message['content'] is string %}{{ message['content'] }} "
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image> "
    "{% elif item['type'] == 'text' %}{{ item['text'] }} {% endif %}"
    "{% endfor %}{% endif %}<sep>"
    "{% else %}"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %} {{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %} {{ eos_token }}"
    "{% endif %}{% endfor %}"
)


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<image>", "<sep>"],
        padding_side="left",  # batched generation pads on the left
        model_max_length=1024,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_image_processor(cfg: WorldConfig):
    from transformers import CLIPImageProcessor

    size = cfg.image_size
    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def build_processor(cfg: WorldConfig):
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=build_image_processor(cfg),
        tokenizer=build_tokenizer(),
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by the "default" strategy
    )


def format_prompt(processor, question: str) -> str:
    content = [{"type": "image"}, {"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)
