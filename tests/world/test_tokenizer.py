import numpy as np
import pytest
from PIL import Image

from dowser.world.config import WorldConfig
from dowser.world.tasks import GENERATORS, vocabulary
from dowser.world.tokenizer import SPECIAL_TOKENS, build_processor, format_prompt

CFG = WorldConfig()


@pytest.fixture(scope="module")
def processor():
    return build_processor(CFG)


def test_special_tokens_at_fixed_ids(processor):
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS)))
    assert tok.convert_tokens_to_ids("<image>") == 4
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == len(SPECIAL_TOKENS) + len(vocabulary())


def test_every_task_text_round_trips_without_unk(processor):
    tok = processor.tokenizer
    rng = np.random.default_rng(1)
    for gen in GENERATORS.values():
        for _ in range(100):
            _, q, a, refs = gen(rng, 32)
            for text in [q, *refs]:
                ids = tok(text, add_special_tokens=False)["input_ids"]
                assert tok.unk_token_id not in ids
                assert tok.decode(ids) == text


def test_prompt_format_and_answer_suffix(processor):
    prompt = format_prompt(processor, "how many objects are there ?")
    assert prompt == "<s><image> how many objects are there ? <sep>"
    full = processor.apply_chat_template(
        [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q ?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "3"}]},
        ]
    )
    assert full == "<s><image> q ? <sep> 3 </s>"


def test_processor_expands_image_and_normalises_like_pretraining(processor, tmp_path):
    import pyarrow.parquet as pq

    from dowser.world.pretrain import load_split
    from dowser.world.tasks import generate_split, write_split

    small = WorldConfig(test_size=3)
    write_split(generate_split(small, "world-gqa", "test"), tmp_path / "t.parquet")
    data = load_split(tmp_path / "t.parquet", processor, small)
    row = pq.read_table(tmp_path / "t.parquet").to_pylist()[0]
    import io

    img = Image.open(io.BytesIO(row["image"]["bytes"]))
    out = processor(images=img, text=format_prompt(processor, row["question"]), return_tensors="pt")
    assert out["input_ids"][0].tolist() == data["prompts"][0]
    assert (out["input_ids"][0] == 4).sum() == (CFG.image_size // CFG.patch_size) ** 2
    assert np.allclose(out["pixel_values"][0].numpy(), data["pixel_values"][0].numpy(), atol=1e-5)


def test_processor_save_load(processor, tmp_path):
    from transformers import AutoProcessor

    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert format_prompt(loaded, "x ?") == format_prompt(processor, "x ?")
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
