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
  cut, without those costs.
- Requests carry image references (`dowser.tasks.images`): each batch decodes its own.
- On accelerators, generation writes keys and values into a static cache (no per-step
  concatenation of the whole cache; not compiled, so prompts of any length run eager).
- The first generated step's log-probabilities of each doc's closed answers (the label task's
  choices) are kept, a few floats per doc at any vocabulary size: the label task that follows
  scores single-token answers from them without another forward pass.
"""

from __future__ import annotations

import copy
import json

import torch
import torch.nn.functional as F
from lm_eval.models.hf_vlms import HFMultimodalLM
from lm_eval.models.utils import flatten_image_list, handle_stop_sequences
from lm_eval.models.utils_hf import stop_sequences_criteria
from transformers import LogitsProcessor, LogitsProcessorList, StaticCache

from dowser.tasks import hooks
from dowser.tasks.images import image_key, load_images

LABEL_DELIMITER = " "  # labels.yaml's target_delimiter: a choice is scored as " " + choice


class _FirstStep(LogitsProcessor):
    """Records, at the first generated step only, each row's argmax and the log-probabilities
    of its candidate tokens; passes the scores through unchanged. It sees the scores after any
    processor the generation config adds (none for greedy LLaVA-1.5 or the world model)."""

    def __init__(self, candidates: list[list[int]]):
        self.candidates, self.rows = candidates, None

    def __call__(self, input_ids, scores):
        if self.rows is None and not any(self.candidates):
            self.rows = [None] * len(self.candidates)
        if self.rows is None:
            logp = F.log_softmax(scores.float(), dim=-1)
            best = logp.argmax(-1).tolist()
            self.rows = []
            for row, ids in enumerate(self.candidates):
                vals = logp[row, ids].tolist() if ids else []
                self.rows.append((best[row], dict(zip(ids, vals))) if ids else None)
        return scores


class InMemoryVLM(HFMultimodalLM):
    def __init__(self, model, processor, *, batch_size: int = 32, max_length: int | None = None,
                 static_cache: bool | None = None):
        super().__init__(pretrained=model, tokenizer=processor, batch_size=batch_size,
                         max_length=max_length)
        # (context, image key) -> (argmax token, {candidate token: log-prob}) of the first step
        self.first_step: dict[tuple[str, str], tuple[int, dict[int, float]]] = {}
        self._ids: dict[tuple[str, str], list[int]] = {}  # (context, continuation) -> token ids
        # None: on accelerators only. There a step's torch.cat rewrites the whole cache (batch 64 x
        # 640 tokens of a 7B: 21 GB per step); on CPU it measured no faster (benchmarks/eval_speed.py).
        self.static_cache = self.device.type != "cpu" if static_cache is None else static_cache

    def forget(self) -> None:
        """Drop what one task's generation kept for its label task."""
        self.first_step.clear()
        self._ids.clear()

    def _create_tokenizer(self, pretrained, tokenizer, **kwargs) -> None:
        self.processor = tokenizer
        self.tokenizer = tokenizer.tokenizer

    def _continuation_ids(self, ctx: str, conts: list[str]) -> list[list[int]]:
        """Token ids of each continuation after `ctx`, as lm-eval's _encode_pair splits them
        (trailing spaces of the context belong to the continuation); remembered, so the label
        task reuses what its generation computed."""
        n_sp = len(ctx) - len(ctx.rstrip())
        if n_sp:
            ctx, conts = ctx[:-n_sp], [ctx[-n_sp:] + c for c in conts]
        todo = [c for c in dict.fromkeys(conts) if (ctx, c) not in self._ids]
        if todo:
            n_ctx = len(self.tokenizer(ctx)["input_ids"])
            for c, ids in zip(todo, self.tokenizer([ctx + c for c in todo])["input_ids"]):
                self._ids[(ctx, c)] = ids[n_ctx:]
        return [self._ids[(ctx, c)] for c in conts]

    def _label_candidates(self, ctx: str, doc) -> list[int]:
        """First tokens of the doc's closed answers when each is one token, else []."""
        try:
            choices = hooks.label_choices(doc) if doc is not None and doc.get("choices") else []
        except (ValueError, KeyError, TypeError):
            return []
        ids = self._continuation_ids(ctx, [LABEL_DELIMITER + c for c in choices]) if choices else []
        return [i[0] for i in ids] if ids and all(len(i) == 1 for i in ids) else []

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
                texts = self._generate_batch([requests[i].args for i in chunk],
                                             [getattr(requests[i], "doc", None) for i in chunk])
                for i, text in zip(chunk, texts):
                    out[i] = text
        return out

    def _generate_batch(self, args, docs=None) -> list[str]:
        contexts = [a[0] for a in args]
        refs = [list(a[2]["visual"]) for a in args]
        visuals = [load_images(v) for v in refs]
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
        del visuals
        n_in = inputs["input_ids"].shape[1]
        if any(s and s != eos for s in until):
            kwargs["stopping_criteria"] = stop_sequences_criteria(
                self.tokenizer, until, n_in, inputs["input_ids"].shape[0])
        docs = docs or [None] * len(args)
        first = _FirstStep([self._label_candidates(c, d) for c, d in zip(contexts, docs)])
        if self.static_cache:  # sized to this batch (generate's own keeps the longest seen)
            kwargs["cache"] = StaticCache(config=self.model.config.get_text_config(decoder=True),
                                          max_cache_len=n_in + max_new)
            kwargs["disable_compile"] = True  # compiled decoding recompiles per prompt length
        with torch.no_grad():
            sequences = self.model.generate(
                **inputs, max_new_tokens=max_new, eos_token_id=self.eot_token_id,
                pad_token_id=self.tokenizer.pad_token_id, use_cache=True,
                logits_processor=LogitsProcessorList([first]), **kwargs)
        for ctx, ref, entry in zip(contexts, refs, first.rows or []):
            if entry is not None:
                self.first_step[(ctx.rstrip(), image_key(ref))] = entry
        texts = []
        for row in sequences[:, n_in:].tolist():
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
            conts = list(zip([i for i, _ in items], self._continuation_ids(ctx, [c for _, c in items])))
            if all(len(ids) == 1 for _, ids in conts):
                cached = self.first_step.get((ctx, image_key(visual)))
                if cached is not None and all(ids[0] in cached[1] for _, ids in conts):
                    best, logp = cached
                    for i, ids in conts:
                        out[i] = (logp[ids[0]], best == ids[0])
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
            images = [load_images(job[1]) for job in batch]
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
