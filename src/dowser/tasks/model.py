"""lm-eval model for a VLM already in memory (possibly carrying fine-tuned weights).

    from dowser.tasks.model import InMemoryVLM
    lm = InMemoryVLM(model, processor, batch_size=32)
    lm_eval.evaluator.evaluate(lm=lm, task_dict=..., apply_chat_template=True)

Why a subclass of lm-eval 0.4.13's `HFMultimodalLM` ("hf-multimodal") is needed:
- `_create_tokenizer` returns a processor *object* instead of storing it, so
  `self.processor` is never set when one is passed in: we store it.
- image `loglikelihood` is not implemented upstream in lm-eval 0.4.13 (it raises):
  we score continuations ourselves, batched, for label-restricted accuracy.
- `generate_until` runs `gc.collect()` after every batch (0.3 s each on 2 cores) and
  decodes the batch at every step for its stop strings even when the only one is EOS,
  which `generate` handles itself. Ours keeps its batching (longest first, grouped by
  generation kwargs), its encoding (`tok_batch_multimodal_encode`) and its stop-string
  cut, without those costs, and keeps the first step's log-probabilities: the label
  task that follows scores single-token answers from them without another forward pass.
"""

from __future__ import annotations

import copy
import hashlib
import json

import torch
import torch.nn.functional as F
from lm_eval.models.hf_vlms import HFMultimodalLM
from lm_eval.models.utils import flatten_image_list, handle_stop_sequences
from lm_eval.models.utils_hf import stop_sequences_criteria

# First-step log-probs are kept only for small vocabularies (the world model's ~200
# words): a 32k-vocabulary model would hold 128 KB per example.
CACHE_MAX_VOCAB = 4096


def _image_key(visual) -> str:
    h = hashlib.blake2b(digest_size=16)
    for img in visual:
        h.update(repr((img.mode, img.size)).encode())
        h.update(img.tobytes())
    return h.hexdigest()


class InMemoryVLM(HFMultimodalLM):
    def __init__(self, model, processor, *, batch_size: int = 32, max_length: int | None = None):
        super().__init__(pretrained=model, tokenizer=processor, batch_size=batch_size,
                         max_length=max_length)
        self.first_step: dict[tuple[str, str], torch.Tensor] = {}

    def _create_tokenizer(self, pretrained, tokenizer, **kwargs) -> None:
        self.processor = tokenizer
        self.tokenizer = tokenizer.tokenizer

    # --- generation ---------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if requests and len(requests[0].args) < 3:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out: list = [None] * len(requests)
        for idx in groups.values():
            idx.sort(key=lambda i: -len(requests[i].args[0]))
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                texts = self._generate_batch([requests[i].args for i in chunk])
                for i, text in zip(chunk, texts):
                    out[i] = text
        return out

    def _generate_batch(self, args) -> list[str]:
        contexts = [a[0] for a in args]
        visuals = [list(a[2]["visual"]) for a in args]
        kwargs = copy.deepcopy(args[0][1])
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        max_new = kwargs.pop("max_gen_toks", self.max_gen_toks)
        temperature = kwargs.pop("temperature", 0.0) or 0.0
        if kwargs.get("do_sample") and temperature > 0:  # evaluate.preset authors: their scripts sample
            kwargs["temperature"] = temperature
        elif kwargs.get("do_sample") or temperature:
            raise ValueError("dowser decodes greedily, or samples where a task sets do_sample and a temperature > 0")
        else:
            kwargs["do_sample"] = False
        inputs = self.tok_batch_multimodal_encode(
            contexts, visuals, left_truncate_len=self.max_length - max_new,
            truncation=self.truncation)
        n_in = inputs["input_ids"].shape[1]
        if any(s and s != eos for s in until):
            kwargs["stopping_criteria"] = stop_sequences_criteria(
                self.tokenizer, until, n_in, inputs["input_ids"].shape[0])
        keep = self.model.config.get_text_config().vocab_size <= CACHE_MAX_VOCAB
        with torch.no_grad():
            gen = self.model.generate(
                **inputs, max_new_tokens=max_new, eos_token_id=self.eot_token_id,
                pad_token_id=self.tokenizer.pad_token_id, use_cache=True,
                output_logits=keep, return_dict_in_generate=True, **kwargs)
        if keep:
            first = F.log_softmax(gen.logits[0].float(), dim=-1)
            for row, (ctx, vis) in enumerate(zip(contexts, visuals)):
                self.first_step[(ctx.rstrip(), _image_key(vis))] = first[row]
        texts = []
        for row in gen.sequences[:, n_in:].tolist():
            text = self.tok_decode(row)
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            texts.append(text)
        return texts

    # --- log-likelihood -----------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        """Sum of log p(continuation | image, context) and whether it is the greedy path.

        Requests sharing a context and image (the choices of one doc) are grouped. When
        every continuation is one token, the context's next-token log-probs score them
        all: from the generation of the same prompt if it ran, else one forward pass.
        Otherwise each (context + continuation) is one row of a batched forward pass.
        """
        if requests and len(requests[0].args) < 3:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        groups: dict[tuple, list] = {}
        for i, req in enumerate(requests):
            ctx, cont, aux = req.args
            n_sp = len(ctx) - len(ctx.rstrip())
            if n_sp:  # as lm-eval's _encode_pair: trailing spaces belong to the continuation
                ctx, cont = ctx[:-n_sp], ctx[-n_sp:] + cont
            groups.setdefault((ctx, id(aux)), [ctx, aux["visual"], []])[2].append((i, cont))
        out: list = [None] * len(requests)
        jobs = []  # (text, images, [(request index, continuation ids)], text is bare context)
        for ctx, visual, items in groups.values():
            n_ctx = len(self.tokenizer(ctx)["input_ids"])
            conts = [(i, self.tokenizer(ctx + c)["input_ids"][n_ctx:]) for i, c in items]
            if all(len(ids) == 1 for _, ids in conts):
                cached = self.first_step.get((ctx, _image_key(visual)))
                if cached is not None:
                    self._score_next_token(cached, conts, out)
                else:
                    jobs.append((ctx, visual, conts, True))
            else:
                jobs += [(ctx + c, visual, [(i, ids)], False)
                         for (i, ids), (_, c) in zip(conts, items)]
        jobs.sort(key=lambda j: -len(j[0]))
        for start in range(0, len(jobs), self.batch_size):
            self._score_batch(jobs[start:start + self.batch_size], out)
        return out

    @staticmethod
    def _score_next_token(logp, items, out) -> None:
        best = int(logp.argmax())
        for i, ids in items:
            out[i] = (float(logp[ids[0]]), best == ids[0])

    def _score_batch(self, batch, out) -> None:
        tok = self.tokenizer
        old_side, tok.padding_side = tok.padding_side, "left"
        try:
            images = [list(job[1]) for job in batch]
            if getattr(self.config, "model_type", "") == "llava":
                images = flatten_image_list(images)
            enc = self.processor(text=[job[0] for job in batch], images=images,
                                 padding="longest", return_tensors="pt")
        finally:
            tok.padding_side = old_side
        enc = enc.to(self.device, self.model.dtype)
        # A bare-context job reads the last position; a continuation of n tokens reads
        # the n positions before the end (rows are left-padded).
        need = max(1 if ctx_only else len(items[0][1]) for _, _, items, ctx_only in batch)
        with torch.no_grad():
            logits = self.model(**enc, logits_to_keep=need + 1).logits
        logp = F.log_softmax(logits.float(), dim=-1)
        for row, (_, _, items, ctx_only) in enumerate(batch):
            if ctx_only:
                self._score_next_token(logp[row, -1], items, out)
                continue
            i, ids = items[0]
            pos = logp[row, -len(ids) - 1:-1]
            target = torch.tensor(ids, device=pos.device)
            lp = pos.gather(-1, target[:, None]).squeeze(-1)
            out[i] = (float(lp.sum()), bool((pos.argmax(-1) == target).all()))
