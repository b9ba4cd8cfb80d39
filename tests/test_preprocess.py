"""`model.preprocess: llava` against an independent re-derivation of LLaVA's own code
(haotian-liu/LLaVA c121f04: llava/mm_utils.py expand2square, process_images with
image_aspect_ratio 'pad', tokenizer_image_token; llava/conversation.py conv_vicuna_v1;
llava/train/train.py preprocess_v1's label masking), written out below with transformers
4.37.2's CLIPImageProcessor arithmetic (PIL bicubic resize, x * (1/255) in float64 cast to
float32, (x - mean) / std in float32). The tiny tokenizer is a Llama BPE one (Metaspace,
byte fallback), so tokenizing chunk by chunk differs from tokenizing the whole prompt."""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dowser.data import sft_batch, user_prompt
from dowser.preprocess import LLAVA_V1_SYSTEM, LlavaV1Processor, prepare_processor
from tests.tinymodels import tiny_llava, tiny_llava_processor

SIZE = 28  # tiny_llava's CLIP input; 14 px patches: 4 image tokens (CLS dropped)
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
VICUNA_V1 = ("A chat between a curious user and an artificial intelligence assistant. "
             "The assistant gives helpful, detailed, and polite answers to the user's questions.")
QUESTIONS = ["What is it?", "How many dots are there?\nAnswer the question using a single word or phrase."]
ANSWERS = ["A cat.", "12"]


@pytest.fixture(scope="module")
def hf():
    return tiny_llava_processor(SIZE, MEAN, STD)


@pytest.fixture(scope="module")
def llava(hf):
    return prepare_processor(hf, "llava")


def _images():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (30, 47, 3), dtype=np.uint8)  # H x W
    tall = rng.integers(0, 256, (61, 20, 3), dtype=np.uint8)
    square = rng.integers(0, 256, (33, 33, 3), dtype=np.uint8)
    return [Image.fromarray(wide), Image.fromarray(tall), Image.fromarray(square)]


# --- the re-derivation -------------------------------------------------------------------
def ref_expand2square(img, bg):
    w, h = img.size
    if w == h:
        return img
    if w > h:
        out = Image.new(img.mode, (w, w), bg)
        out.paste(img, (0, (w - h) // 2))
    else:
        out = Image.new(img.mode, (h, h), bg)
        out.paste(img, ((h - w) // 2, 0))
    return out


def ref_process_images(images):
    """process_images(images, CLIPImageProcessor(336 -> SIZE), image_aspect_ratio='pad')."""
    out = []
    for img in images:
        sq = ref_expand2square(img, tuple(int(x * 255) for x in MEAN))
        # a square: shortest_edge resize gives SIZE x SIZE, and the centre crop keeps it all
        arr = np.array(sq.resize((SIZE, SIZE), resample=Image.BICUBIC))
        arr = (arr * (1 / 255)).astype(np.float32)
        arr = (arr - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
        out.append(torch.from_numpy(arr.transpose(2, 0, 1).copy()))
    return torch.stack(out)


def ref_prompt(question, answer=None, system=VICUNA_V1):
    """conv_vicuna_v1 (SeparatorStyle.TWO) with the image before the question."""
    seps, ret = [" ", "</s>"], system + " "
    for i, (role, msg) in enumerate([("USER", "<image>\n" + question), ("ASSISTANT", answer)]):
        ret += role + ": " + msg + seps[i % 2] if msg else role + ":"
    return ret


def ref_tokenizer_image_token(prompt, tok, image=-200):
    chunks = [tok(c).input_ids for c in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tok.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for x in [e for sub in zip(chunks, [[image] * (offset + 1)] * len(chunks)) for e in sub][:-1]:
        ids.extend(x[offset:])
    return ids


def expand(ids, image_id, n=4, image=-200):
    return [t for i in ids for t in ([image_id] * n if i == image else [i])]


def ref_labels(prompt, tok):
    """preprocess_v1's target for one round (tokenizer_image_token lengths), image token expanded."""
    ids = ref_tokenizer_image_token(prompt, tok)
    target = list(ids)
    sep = " ASSISTANT: "
    rou = prompt.split("</s>")[0]
    parts = rou.split(sep)
    round_len = len(ref_tokenizer_image_token(rou, tok))
    instruction_len = len(ref_tokenizer_image_token(parts[0] + sep, tok)) - 2
    target[:1] = [-100]
    target[1:1 + instruction_len] = [-100] * instruction_len
    target[1 + round_len:] = [-100] * len(target[1 + round_len:])
    return [t for i, t in zip(ids, target) for t in ([t] * 4 if i == -200 else [t])]


# --- tests -------------------------------------------------------------------------------
def test_pixel_values_are_process_images_with_pad(llava, hf):
    images = _images()
    ours = llava(text=["<image>"] * 3, images=images, return_tensors="pt")["pixel_values"]
    assert ours.shape == (3, 3, SIZE, SIZE) and ours.dtype == torch.float32
    assert torch.equal(ours, ref_process_images(images))
    plain = hf(text=["<image>"] * 3, images=images, return_tensors="pt")["pixel_values"]
    assert not torch.allclose(plain[0], ours[0], atol=0.1)  # llava-hf crops the wide image's sides
    assert torch.equal(plain[2], ours[2])  # a square image needs no padding


def test_padding_colour_is_the_clip_mean_truncated():
    img = Image.new("RGB", (4, 2), (255, 0, 0))
    sq = np.array(ref_expand2square(img, (122, 116, 104)))
    from dowser.preprocess import expand2square

    assert np.array_equal(np.array(expand2square(img, (122, 116, 104))), sq)
    assert sq[0, 0].tolist() == [122, 116, 104] and sq[1, 0].tolist() == [255, 0, 0]


def test_prompt_is_vicuna_v1(llava):
    for q, a in zip(QUESTIONS, ANSWERS):
        assert user_prompt(llava, q) == ref_prompt(q)
        convo = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
                 {"role": "assistant", "content": [{"type": "text", "text": a}]}]
        assert llava.apply_chat_template(convo) == ref_prompt(q, a)
    theirs = llava.with_system(LLAVA_V1_SYSTEM)
    got = theirs.apply_chat_template([{"role": "user", "content": "<image>\nHi"}], add_generation_prompt=True)
    assert got == ref_prompt("Hi", system=LLAVA_V1_SYSTEM)


def test_training_ids_and_labels_are_llavas(llava):
    tok = llava.tokenizer
    rows = pd.DataFrame({"image": [{"bytes": _png(im), "path": None} for im in _images()[:2]],
                         "question": QUESTIONS, "answer": ANSWERS})
    batch = sft_batch(llava, rows)
    assert torch.equal(batch["pixel_values"], ref_process_images(_images()[:2]))
    for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS)):
        full = ref_prompt(q, a)
        want = expand(ref_tokenizer_image_token(full, tok), llava.image_token_id)
        n = int(batch["attention_mask"][i].sum())
        assert batch["input_ids"][i, :n].tolist() == want
        assert batch["labels"][i, :n].tolist() == ref_labels(full, tok)
        assert batch["labels"][i, n:].eq(-100).all() and batch["input_ids"][i, n:].eq(tok.pad_token_id).all()
    # the chunked tokenization is not the whole prompt's: the text after <image> starts with "▁"
    whole = tok(ref_prompt(QUESTIONS[0])).input_ids
    chunked = ref_tokenizer_image_token(ref_prompt(QUESTIONS[0]), tok)
    assert len(chunked) == len(whole) + 1 and tok.convert_ids_to_tokens(chunked[chunked.index(-200) + 1]) == "▁"


def test_the_model_reads_the_batch(llava):
    model = tiny_llava(vocab=len(llava.tokenizer), image_token=llava.image_token_id)
    rows = pd.DataFrame({"image": [{"bytes": _png(_images()[0]), "path": None}], "question": QUESTIONS[:1],
                         "answer": ANSWERS[:1]})
    out = model(**sft_batch(llava, rows))
    assert torch.isfinite(out.loss)


def test_evaluation_encodes_as_llava(llava):
    """lm-eval's chat formatting and batch encoding (InMemoryVLM) give LLaVA's eval ids, left-padded."""
    from dowser.tasks.model import InMemoryVLM

    model = tiny_llava(vocab=len(llava.tokenizer), image_token=llava.image_token_id)
    lm = InMemoryVLM(model, llava, batch_size=2)
    contexts = [lm.apply_chat_template([{"role": "user", "content": "<image>" + q}]) for q in QUESTIONS]
    assert contexts == [ref_prompt(q) for q in QUESTIONS]
    images = _images()[:2]
    enc = lm.tok_batch_multimodal_encode(contexts, [[im] for im in images])
    assert torch.equal(enc["pixel_values"], ref_process_images(images))
    tok = llava.tokenizer
    for i, ctx in enumerate(contexts):
        want = expand(ref_tokenizer_image_token(ctx, tok), llava.image_token_id)
        row = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
        assert row == want and enc["input_ids"][i, -1].item() == want[-1]  # left padding


def test_hf_keeps_the_processor_and_bad_names_fail(hf):
    assert prepare_processor(hf, "hf") is hf
    with pytest.raises(ValueError, match="model.preprocess: 'pad' is not one of hf, llava"):
        prepare_processor(hf, "pad")
    with pytest.raises(ValueError, match="needs a LLaVA processor"):
        LlavaV1Processor(hf.tokenizer)
    llava = prepare_processor(hf, "llava")
    with pytest.raises(ValueError, match="1 image tokens in the texts for 2 images"):
        llava(text=["<image> hi"], images=_images()[:2])
    one = llava(text="<image> hi", images=_images()[0], return_tensors="pt")
    assert one["input_ids"].shape == (1, len(ref_tokenizer_image_token("<image> hi", hf.tokenizer)) + 3)
    with pytest.raises(Exception, match="user and assistant turns only, not system"):
        llava.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}])


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_noise_probes_are_tokenized_as_llava(llava):
    from dowser.probe import noise_image_inputs

    probes = pd.DataFrame({"rng_seed": [3, 4], "text": ["a cat sat", "Hi!"]})
    ids, pixels = noise_image_inputs(llava, probes)
    for row, text in zip(ids, probes["text"]):
        assert row == expand(ref_tokenizer_image_token(f"<image> {text}", llava.tokenizer), llava.image_token_id)
    assert pixels[0].shape == (3, SIZE, SIZE)


def test_the_model_stage_records_preprocess_for_every_later_stage(tmp_path):
    import json

    from dowser.cli import main
    from dowser.models import load_artifact
    from dowser.spec import ModelSpec

    proc = tiny_llava_processor()
    tiny_llava(vocab=len(proc.tokenizer), image_token=proc.image_token_id).save_pretrained(tmp_path / "src")
    proc.save_pretrained(tmp_path / "src")
    spec = ModelSpec(source="hub", name=str(tmp_path / "src"), preprocess="llava")
    assert main(["model", "--spec", spec.to_json(), "--out", str(tmp_path / "model")]) == 0
    assert json.loads((tmp_path / "model" / "spec.json").read_text())["preprocess"] == "llava"
    assert type(load_artifact(tmp_path / "model", device="cpu")[1]) is LlavaV1Processor


def test_finetune_trains_on_llava_inputs(tmp_path, monkeypatch):
    """The fine-tune stage reads spec.json's preprocess: its samples come from LlavaV1Processor."""
    import json

    import dowser.finetune as ft
    from dowser.world.config import WorldConfig
    from dowser.world.tasks import generate_split, write_split

    proc = tiny_llava_processor()
    tiny_llava(vocab=len(proc.tokenizer), image_token=proc.image_token_id).save_pretrained(tmp_path / "model")
    proc.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "spec.json").write_text(json.dumps({"kind": "model", "preprocess": "llava"}))
    task = "world-imagenet-r"
    write_split(generate_split(WorldConfig(downstream_train_size=8), task, "train"),
                tmp_path / "data" / task / "train.parquet")
    seen, samples = [], ft.SFTSamples

    def spy(processor, rows, *a, **kw):
        seen.append(processor)
        return samples(processor, rows, *a, **kw)

    monkeypatch.setattr(ft, "SFTSamples", spy)
    spec = {"kind": "run", "model": "m", "method": "full", "task": task, "depth": 1, "mask": None, "rho": None,
            "seed": None, "train": {"lr": 1e-2, "batch_size": 4, "train_samples": 8, "epochs": 1, "seed": 0}}
    ft.finetune(spec, tmp_path / "model", tmp_path / "data", tmp_path / "run", progress=False)
    assert [type(p) for p in seen] == [LlavaV1Processor] and seen[0].system == VICUNA_V1
    assert (tmp_path / "run" / "delta.safetensors").exists()
