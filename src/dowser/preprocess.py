"""LLaVA-1.5's own inputs (`model.preprocess: llava`), as haotian-liu/LLaVA builds them.

    from dowser.preprocess import prepare_processor
    processor = prepare_processor(processor, "llava")   # "hf": the checkpoint's processor as is
    processor(text=[prompt], images=[image], return_tensors="pt")  # pixel_values, input_ids

The llava-hf processor differs from LLaVA's code (`llava/mm_utils.py`, `llava/conversation.py`,
run with `--image_aspect_ratio pad --version v1` for training and `--conv-mode vicuna_v1` for
its evaluation) in three ways, which `LlavaV1Processor` undoes:
- images: `process_images` pads each image to a square with the CLIP mean (`expand2square`,
  colour int(255 * mean)) before the CLIP processor; llava-hf resizes the short side and
  centre-crops, cutting the long side's edges. The CLIP step runs on transformers' PIL backend,
  as LLaVA's pinned transformers 4.37.2 did (the torchvision backend resamples differently).
- prompt: the `vicuna_v1` conversation (SeparatorStyle.TWO): `{system} USER: <image>\\n{question}
  ASSISTANT:`, answers closed by `</s>`; llava-hf's chat template has no system prompt.
- token ids: `tokenizer_image_token` tokenizes the text between image tokens chunk by chunk,
  each chunk as a text of its own (so a Llama tokenizer starts the chunk after `<image>` with
  its prefix-space token `▁`, which whole-prompt tokenization leaves out) and drops the BOS of
  every chunk but the first.
Each image token is then expanded to the vision tower's feature count, as llava-hf's model
expects (LLaVA's own model splices the features in at that one position: the same sequence).
"""

from __future__ import annotations

import json

PREPROCESS = ("hf", "llava")  # model.preprocess (dowser.spec: ModelSpec.preprocess)

# llava/conversation.py at haotian-liu/LLaVA c121f04: conv_vicuna_v1 (`--version v1`, the
# `vicuna_v1` eval mode) and conv_llava_v1 (the `llava_v1` default of the authors' downstream
# model_vqa_*.py scripts); both SeparatorStyle.TWO with sep " " and sep2 "</s>".
VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")
CONVERSATIONS = {"vicuna_v1": VICUNA_V1_SYSTEM, "llava_v1": LLAVA_V1_SYSTEM}


def conversation_template(system: str, image_token: str = "<image>") -> str:
    """The SeparatorStyle.TWO conversation as a chat template: the system prompt and " ", then per
    message `ROLE: text` and " " (even turns) or "</s>" (odd turns); an image item is written as
    `<image>\\n` where it stands (LLaVA puts it before the question); a generation prompt ends in
    `ASSISTANT:`."""
    lit = json.dumps  # a JSON string is a valid Jinja string literal
    return (
        "{{ " + lit(system + " ") + " }}"
        "{% for m in messages %}"
        "{% if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('vicuna_v1 conversations have user and assistant turns only, not ' + m['role']) }}"
        "{% endif %}"
        "{{ 'USER' if m['role'] == 'user' else 'ASSISTANT' }}: "
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}{{ " + lit(image_token + "\n") + " }}"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ ' ' if loop.index0 % 2 == 0 else '</s>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


def expand2square(image, background: tuple[int, ...]):
    """`llava.mm_utils.expand2square`: the image centred on a square of its longer side."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - width) // 2, (side - height) // 2))
    return out


def clip_pil(image_processor):
    """The same CLIP settings on transformers' PIL backend (LLaVA's transformers 4.37.2 had only it)."""
    from transformers import CLIPImageProcessorPil

    keys = ("size", "crop_size", "image_mean", "image_std", "resample", "do_resize", "do_center_crop",
            "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb")
    saved = image_processor.to_dict()  # plain values whatever the backend (torchvision keeps SizeDicts)
    missing = [k for k in ("size", "crop_size", "image_mean", "image_std") if saved.get(k) is None]
    if missing:
        raise ValueError(f"model.preprocess 'llava' needs a CLIP image processor; {type(image_processor).__name__} "
                         f"has no {', '.join(missing)}")
    return CLIPImageProcessorPil(**{k: saved[k] for k in keys if k in saved})


class LlavaV1Processor:
    """A llava-hf `LlavaProcessor` that pads, prompts and tokenizes as LLaVA's own code. Every
    attribute it does not define (`tokenizer`, `image_token`, `save_pretrained`, ...) is the
    wrapped processor's."""

    def __init__(self, processor, system: str = VICUNA_V1_SYSTEM):
        if not hasattr(processor, "image_processor") or not hasattr(processor, "replace_image_token"):
            raise ValueError(f"model.preprocess 'llava' needs a LLaVA processor (image processor and image "
                             f"token), not {type(processor).__name__}")
        self.processor = processor
        self.system = system
        self.image_processor = clip_pil(processor.image_processor)
        self.background = tuple(int(x * 255) for x in self.image_processor.image_mean)
        self.chat_template = conversation_template(system, processor.image_token)

    def __getattr__(self, name):
        if name == "processor":  # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.processor, name)

    def with_system(self, system: str) -> "LlavaV1Processor":
        """The same processor with another system prompt (the authors' eval uses conv_llava_v1)."""
        return LlavaV1Processor(self.processor, system)

    def apply_chat_template(self, conversation, add_generation_prompt: bool = False, tokenize: bool = False,
                            continue_final_message: bool = False, **kwargs):
        if tokenize or continue_final_message or kwargs:
            raise ValueError("LlavaV1Processor.apply_chat_template renders text only (tokenize=False, "
                             "no continue_final_message or template options)")
        return self.processor.apply_chat_template(conversation, chat_template=self.chat_template,
                                                  add_generation_prompt=add_generation_prompt, tokenize=False)

    def pixel_values(self, images):
        """`process_images(images, image_processor, image_aspect_ratio='pad')` -> [n, 3, H, W]."""
        padded = [expand2square(im.convert("RGB"), self.background) for im in images]
        return self.image_processor(padded, return_tensors="pt")["pixel_values"]

    def token_ids(self, text: str, image_tokens: list[int]) -> list[int]:
        """`tokenizer_image_token(text)`, its k-th image token repeated image_tokens[k] times."""
        tok = self.processor.tokenizer
        chunks = [tok(chunk).input_ids for chunk in text.split(self.processor.image_token)]
        if len(chunks) - 1 != len(image_tokens):
            raise ValueError(f"{len(chunks) - 1} image tokens in the text for {len(image_tokens)} images")
        skip = 1 if tok.bos_token_id is not None and chunks[0][:1] == [tok.bos_token_id] else 0
        ids = list(chunks[0][:skip])
        for k, chunk in enumerate(chunks):
            if k:
                ids += [self.processor.image_token_id] * image_tokens[k - 1]
            ids += chunk[skip:]
        return ids

    def __call__(self, text=None, images=None, padding=False, return_tensors=None, truncation=False, **kwargs):
        from PIL import Image
        from transformers import BatchFeature

        if truncation or kwargs:
            raise ValueError(f"LlavaV1Processor does not take {['truncation'] if truncation else sorted(kwargs)}")
        texts = [text] if isinstance(text, str) else list(text or [])
        images = [images] if isinstance(images, Image.Image) else images
        flat = []
        for item in images or []:  # one list of images per text, or one flat list (llava-hf accepts both)
            flat += list(item) if isinstance(item, (list, tuple)) else [item]
        pixels = self.pixel_values(flat) if flat else None
        counts = [len(self.processor.replace_image_token({"pixel_values": pixels}, k)) // len(self.image_token)
                  for k in range(len(flat))]
        rows, used = [], 0
        for t in texts:
            n = t.count(self.processor.image_token)
            rows.append(self.token_ids(t, counts[used:used + n]))
            used += n
        if used != len(flat):
            raise ValueError(f"{used} image tokens in the texts for {len(flat)} images")
        data = dict(self.processor.tokenizer.pad({"input_ids": rows}, padding=padding, return_tensors=return_tensors))
        if pixels is not None:
            data["pixel_values"] = pixels
        return BatchFeature(data=data, tensor_type=return_tensors)


def prepare_processor(processor, preprocess: str = "hf"):
    """The processor every stage uses for `model.preprocess` (PREPROCESS)."""
    if preprocess == "hf":
        return processor
    if preprocess == "llava":
        return LlavaV1Processor(processor)
    raise ValueError(f"model.preprocess: '{preprocess}' is not one of {', '.join(PREPROCESS)}")
