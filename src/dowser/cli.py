"""`dowser <stage>`: one thin subcommand per pipeline stage (the rules' shell lines).

    dowser probe --spec '<json>' --model results/models/<id> --out results/probes/<id>

Every stage writes into a temporary path and renames it into place, then records
spec.json and provenance.json beside its artifact. Errors in user input print one line
(`dowser: error: ...`) and exit 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from dowser.artifacts import atomic_path, write_json, write_spec


def _spec(args, *kinds: str) -> dict:
    """The stage's --spec, every key checked against the spec class of `kinds` (dowser.spec:
    `--spec: mask.rhoo: unknown key`, `--spec: mask.rho: required`). args.spec becomes the
    spec's canonical JSON (defaults filled), which the artifact records and its id hashes."""
    from dowser.spec import parse_spec, spec_classes

    classes = spec_classes()
    spec = parse_spec(args.spec, *(classes[k] for k in kinds))
    args.spec = spec.to_json()
    return spec.to_dict()


def cmd_data(args):
    from dowser.world.config import WorldConfig
    from dowser.world.tasks import generate_task_data

    spec, started = _spec(args, "data"), time.time()
    cfg = WorldConfig.from_dict(spec["world"]["config"])
    with atomic_path(Path(args.out)) as tmp:
        generate_task_data(cfg, tmp)
        write_spec(tmp, args.spec, started)


def cmd_model(args):
    spec, started = _spec(args, "model"), time.time()
    with atomic_path(Path(args.out)) as tmp:
        if spec["source"] == "world":
            from dowser.world import build_base
            from dowser.world.config import WorldConfig

            build_base(WorldConfig.from_dict(spec["world"]["config"]), Path(args.data), tmp, spec["pretrain"])
        else:
            from dowser.models import download_model

            download_model(spec, tmp)
        write_spec(tmp, args.spec, started)


def cmd_probe(args):
    from dowser.models import load_artifact
    from dowser.probe import synthesize_probes

    spec, started = _spec(args, "probe"), time.time()
    model, processor = load_artifact(args.model)
    if spec.get("preset", "default") == "official":
        from dowser.probe import synthesize_probes_official

        probes = synthesize_probes_official(model, processor, spec["n"], spec["seed"], spec["params"], progress=True)
    else:
        probes = synthesize_probes(model, processor, spec["n"], spec["seed_len"], spec["new_tokens"],
                                   spec["temperature"], spec["seed"], progress=True)
    probes["image"] = spec["image"]  # the scorer pairs 'noise' probes with random-pixel images
    with atomic_path(Path(args.out)) as tmp:
        tmp.mkdir()
        probes.to_parquet(tmp / "probes.parquet", index=False)
        write_spec(tmp, args.spec, started)


def cmd_score(args):
    from dowser.models import load_artifact
    from dowser.score import ScoreConfig, accumulate_scores, write_shard

    spec = _spec(args, "score")
    model, processor = load_artifact(args.model)
    n = spec["shards"]
    if not 0 <= args.shard < n:
        raise ValueError(f"--shard {args.shard} is outside 0..{n - 1}")
    official = spec.get("preset", "default") == "official"
    group = spec["params"]["batch_size"] if official else 1  # official: shards split between scoring batches
    if spec.get("source", "probes") == "task":
        from dowser.data import read_rows, scoring_inputs
        from dowser.tasks import scoring_split

        rows = read_rows(scoring_split(spec["task"], Path(args.data)), limit=spec["samples"])
        total, indices = len(rows), [i for i in range(len(rows)) if (i // group) % n == args.shard]
        batch_ids = [i // group for i in indices]
        token_ids, pixels = scoring_inputs(processor, rows.iloc[indices])
    else:
        from dowser.probe import load_probes

        probes = load_probes(args.probes)
        bid = probes["batch"] if official and "batch" in probes else probes["probe_index"] // group
        mine = probes[bid % n == args.shard]
        total, indices, batch_ids = len(probes), mine["probe_index"].tolist(), bid[bid % n == args.shard].tolist()
        if "image" in mine and (mine["image"] == "noise").any():
            from dowser.probe import noise_image_inputs

            token_ids, pixels = noise_image_inputs(processor, mine)
        else:
            token_ids, pixels = [list(x) for x in mine["token_ids"]], None
    tok = getattr(processor, "tokenizer", processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    if official:  # dowser.score's official-preset section; batches from the probe stage
        from dowser.score import accumulate_official

        stats = accumulate_official(model, token_ids, indices, batch_ids, spec["draws"], spec["seed"], pad,
                                    progress=True, pixel_values=pixels)
    else:
        cfg = ScoreConfig(spec["estimator"], spec["draws"], spec["aggregate"], spec["output"], spec["seed"],
                          args.batch_size, module_groups=args.module_groups)
        stats = accumulate_scores(model, token_ids, indices, cfg, pad, progress=True, pixel_values=pixels)
    with atomic_path(Path(args.out)) as tmp:
        write_shard(tmp, model, stats, indices, total, args.spec, abs_w=args.shard == 0)  # |W| once


def cmd_merge(args):
    from dowser.score import merge_shards

    started = time.time()
    _spec(args, "score")  # names a wrong key before the shards' spec ids are compared
    out = Path(args.out)
    with atomic_path(out) as tmp:
        merge_shards([Path(p) for p in args.shards], tmp, spec_json=args.spec, target=out)
    write_spec(out.parent, args.spec, started)


def cmd_mask(args):
    from dowser.mask import save_masks
    from dowser.methods import MaskContext, get_method
    from dowser.scorefile import open_scores

    spec, started = _spec(args, "mask"), time.time()
    method = get_method(spec["method"], spec.get("params"))
    scores, extra = None, {}
    if method.needs_scores:
        if not args.scores:
            raise ValueError(f"method '{spec['method']}' needs the merged scores (--scores)")
        scores = open_scores(args.scores, expect_id=spec.get("score"))  # streamed, checked against spec["score"]
        shapes = {k: tuple(v.shape) for k, v in scores.items()}
    else:
        from dowser.models import load_artifact, scored_modules

        # wanda runs the probes through the model: on the GPU when there is one
        model, processor = load_artifact(args.model, device=None if method.needs_probes else "cpu")
        shapes = {m.name: m.shape for m in scored_modules(model)}
        extra["model"] = model
        if method.needs_probes:
            from dowser.probe import load_probes

            if not args.probes:
                raise ValueError(f"method '{spec['method']}' needs the probes (--probes)")
            tok = getattr(processor, "tokenizer", processor)
            extra.update(probes=load_probes(args.probes), pad_id=tok.pad_token_id or 0)
    ctx = MaskContext(shapes=shapes, rho=spec["rho"], scope=spec["scope"], selection=spec["selection"],
                      seed=spec["seed"], scores=scores, extra=extra,
                      rule=spec.get("rule", "exact"))
    masks = method.build_mask(ctx)
    out = Path(args.out)
    with atomic_path(out) as tmp:
        summary = save_masks(masks, tmp, spec["rho"], args.spec)  # computes each module's mask as it writes
    write_spec(out.parent, args.spec, started)
    print(summary)


def cmd_finetune(args):
    from dowser.finetune import finetune

    if args.parent:  # post-hoc methods edit the cached Full-FT run instead of training
        from dowser.posthoc import run_posthoc

        print(json.dumps(run_posthoc(_spec(args, "run"), Path(args.model), Path(args.data), Path(args.out),
                                     Path(args.parent))))
        return
    runtime = {} if args.checkpoint_every is None else {"checkpoint_every": args.checkpoint_every}
    runtime.update(sharding=args.sharding, gradient_checkpointing=args.gradient_checkpointing)
    result = finetune(_spec(args, "run", "continual_run"), Path(args.model), Path(args.data), Path(args.out),
                      Path(args.mask) if args.mask else None, **runtime)
    print(json.dumps(result))


def cmd_evaluate(args):
    import shutil

    import torch

    from dowser.evaluate import evaluate_benchmarks, input_stamp
    from dowser.finetune import load_finetuned

    spec, started = _spec(args, "eval"), time.time()
    for key in ("limit", "max_new_tokens"):
        if key not in spec["params"]:
            raise ValueError(f"--spec: eval.params.{key}: required")
    if (spec["run"] is None) != (args.run is None):
        raise ValueError(f"--run: the spec evaluates run {spec['run']}, but no --run was given" if args.run is None
                         else f"--run {args.run}: the spec evaluates the base model (its run is null)")
    torch.manual_seed(0)
    # the delta must hold the run the spec names (its stored spec, as merge and finetune check theirs)
    model, processor = load_finetuned(Path(args.model), Path(args.run) if args.run else None, expect_run=spec["run"])
    params = spec["params"]
    out = Path(args.out)
    # Finished benchmarks survive a killed job here; the folder becomes `out` when all are done.
    work = out.parent / f".{out.name}.partial"
    key = {"spec": spec, "model": input_stamp(Path(args.model)),
           "run": input_stamp(Path(args.run) / "delta.safetensors") if args.run else None}
    results = evaluate_benchmarks(model, processor, list(spec["benchmarks"]), Path(args.data),
                                  batch_size=args.batch_size, limit=params["limit"],
                                  max_new_tokens=params["max_new_tokens"], out_dir=work,
                                  resume_key=key, authors=params.get("authors"))
    run = json.loads((Path(args.run) / "spec.json").read_text()) if args.run else None
    write_json(work / "eval.json", {"eval": json.loads(args.spec), "run": run, "results": results})
    write_spec(work, args.spec, started)
    (work / "resume.json").unlink()
    if out.is_dir():
        shutil.rmtree(out)
    os.replace(work, out)


def cmd_stability(args):
    from dowser.scorefile import open_scores
    from dowser.stability import stability_table

    spec, started = _spec(args, "stability"), time.time()
    table = stability_table(open_scores(args.a, expect_id=spec.get("a")), open_scores(args.b, expect_id=spec.get("b")),
                            top=spec["top"])
    out = Path(args.out)
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    write_spec(out.parent, args.spec, started)
    print(table[table.module == "pooled"].to_string(index=False))


def cmd_continual(args):
    from dowser.continual import materialise_model, write_tables

    if args.action == "model":  # the model after a step: start model + the step's delta
        for opt in ("spec", "model", "run"):
            if not getattr(args, opt):
                raise ValueError(f"dowser continual model: --{opt} is required")
        _spec(args, "continual_model")
        materialise_model(args.spec, Path(args.model), Path(args.run), Path(args.out))
    else:  # A_{t,i}, MFT / MFN / MAA / BWT per method
        if not args.evals:
            raise ValueError("dowser continual table: --evals is required")
        print(write_tables([Path(p) for p in args.evals], Path(args.out)))


def cmd_report(args):
    from dowser.report import write_report

    try:
        config = json.loads(args.config_json) if args.config_json else None
    except json.JSONDecodeError as e:
        raise ValueError(f"--config-json: not JSON ({e})") from None
    summary = write_report([Path(p) for p in args.evals], Path(args.out), Path(args.html) if args.html else None,
                           config, args.configfile)
    print(summary)


def cmd_check_config(args):
    """What `snakemake` checks at parse time, without Snakemake: Snakemake reads --configfile
    files before the workflow runs and reports a YAML error without the file or line."""
    from dowser.config import model_params_b, read_config_file, validate_config
    from dowser.spec import build_grid, repeated_entries

    def merge(base: dict, new: dict) -> dict:  # Snakemake's update_config: nested mappings merge
        for key, value in new.items():
            base[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) and isinstance(
                base.get(key), dict) else value
        return base

    config: dict = {}
    for path in [args.defaults, *args.configfile]:
        config = merge(config, read_config_file(path))
    validate_config(config, args.schema)
    grid = build_grid(config)
    for warning in repeated_entries(config):
        print(f"dowser: warning: {warning}", file=sys.stderr)
    print(f"ok: {len(grid.runs)} runs, {len(grid.masks)} masks, {len(grid.evals)} evaluations; "
          f"model {model_params_b(config):g}B parameters for job sizing")


def cmd_prepare_data(args):
    from dowser.prepare import prepare_benchmarks

    prepare_benchmarks(args.benchmarks, Path(args.out), args.source, limit=args.limit,
                       train_samples=args.train_samples, force=args.force)


# Help for the options several stages share.
OPTION_HELP = {
    "spec": "the stage's spec as JSON (what the workflow passes; dowser.spec)",
    "out": "where the artifact goes (written to a temporary path, then renamed into place)",
    "model": "base model folder (results/models/<id>)",
    "data": "data root: <benchmark>/<split>.parquet (results/data/<id> for the world)",
    "probes": "probe folder or probes.parquet (results/probes/<id>)",
    "scores": "merged score file (results/scores/<id>/scores.h5)",
    "mask": "mask file of a masked method (results/masks/<id>/mask.h5)",
    "parent": "the Full-FT run's delta.safetensors that a post-hoc method edits",
    "run": "a fine-tuned run's folder (results/runs/<id>); omitted: the base model",
    "a": "first merged score file",
    "b": "second merged score file",
}
OPTIONAL = ("mask", "run", "scores", "model", "data", "probes", "parent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dowser", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")

    def add(name, fn, help_, *opts):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        for opt in opts:
            p.add_argument(f"--{opt}", required=opt not in OPTIONAL, help=OPTION_HELP[opt])
        return p

    add("data", cmd_data, "generate the miniature world's task data", "spec", "out")
    add("model", cmd_model, "build the world's base model, or copy/download a hub model", "spec", "data", "out")
    add("probe", cmd_probe, "synthesize the data-free probes (the model writes its own texts)", "spec", "model",
        "out")
    p = add("score", cmd_score, "importance scores of one shard of the probes (or task samples)", "spec", "model",
            "probes", "data", "out")
    p.add_argument("--shard", type=int, required=True, help="this shard's index k in 0..score.shards-1")
    p.add_argument("--batch-size", type=int, default=8, help="probes per forward pass (default 8; no effect on "
                   "the scores)")
    p.add_argument("--module-groups", type=int, default=1, help="score the modules in G groups, one pass over "
                   "the probes each: 1/G of the fp32 accumulators on the device (default 1; same scores)")
    p = add("merge", cmd_merge, "sum the score shards into one scores.h5", "spec", "out")
    p.add_argument("--shards", nargs="+", required=True, help="every shard-<k>-of-<n>.h5 of the score spec")
    add("mask", cmd_mask, "build a method's trainable mask at budget rho", "spec", "scores", "model", "probes",
        "out")
    p = add("finetune", cmd_finetune, "fine-tune one run (or apply a post-hoc method to its Full-FT parent)",
            "spec", "model", "data", "mask", "parent", "out")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="write a resumable checkpoint every N steps (runtime only: not in the run's spec; "
                   "default: finetune.train.checkpoint_every's default, 50)")
    p.add_argument("--sharding", choices=("auto", "none", "fsdp"), default="auto",
                   help="runtime only: fsdp shards parameters, gradients and optimizer state over the processes "
                   "of `accelerate launch`; auto = fsdp when the job has more than one GPU (dowser.distributed)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="runtime only: recompute activations in backward (less memory, same weights)")
    p = add("evaluate", cmd_evaluate, "evaluate the base model or a run on every benchmark of the spec", "spec",
            "model", "run", "data", "out")
    p.add_argument("--batch-size", type=int, default=64, help="generation batch size (default 64)")
    add("stability", cmd_stability, "compare two score files: top-mask Hamming distance, Spearman rho", "spec",
        "a", "b", "out")
    p = add("continual", cmd_continual, "continual learning: the model after a step, or the A_{t,i} tables",
            "model", "run", "out")  # dowser.continual
    p.add_argument("action", choices=["model", "table"], help="model: start model + a step's delta; table: "
                   "accuracy matrix and MFT/MFN/MAA/BWT")
    p.add_argument("--spec", help=OPTION_HELP["spec"] + " (action model)")
    p.add_argument("--evals", nargs="+", help="every continual eval.json (action table)")
    p = add("report", cmd_report, "tables (parquet) and the HTML report from the evaluations", "out")
    p.add_argument("--evals", nargs="+", required=True, help="every results/evals/<id>/eval.json to tabulate")
    p.add_argument("--html", help="folder for index.html and the plots")
    p.add_argument("--config-json", help="the workflow's merged config (named on the page, saved as config.json)")
    p.add_argument("--configfile", nargs="*", default=[], help="the config files it was read from (named on the page)")
    p = add("prepare-data", cmd_prepare_data, "convert real benchmarks (hub or local files) to "
            "<benchmark>/<split>.parquet", "out")
    p.add_argument("--benchmarks", nargs="+", required=True, help="benchmark names (dowser.tasks)")
    p.add_argument("--source", help="folder of local files to convert instead of the hub")
    p.add_argument("--limit", type=int, help="first N rows of every split (a smoke copy)")
    p.add_argument("--train-samples", type=int, default=10_000, help="first N train rows (0: no train split)")
    p.add_argument("--force", action="store_true", help="prepare again even if unchanged")
    p = add("check-config", cmd_check_config, "check config files as the workflow does (names the file and line "
            "of a YAML error)")
    p.add_argument("--configfile", nargs="*", default=[], help="experiment config(s) over --defaults, as for snakemake")
    p.add_argument("--defaults", default="config.yaml", help="the workflow's config.yaml (default: ./config.yaml)")
    p.add_argument("--schema", default="workflow/schemas/config.schema.yaml", help="the workflow's JSON schema")
    from dowser import plan  # torch-free

    p = add("plan", plan.run, "jobs, GPU-hours, peak GPU memory and bytes of a config's grid (no jobs run)")
    plan.add_arguments(p)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        # What the package raises on purpose for bad input (a wrong file, shape, key or value, a
        # read-only folder): one line. Anything else (KeyError, TypeError, ...) is a bug and keeps
        # its traceback.
        print(f"dowser: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
