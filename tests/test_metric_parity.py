"""Our metrics vs lmms-eval's own code, on experiments/metric_parity.py's seeded corpora.

Runs where lmms-eval is installed (`pip install --no-deps lmms-eval loguru` is enough:
its files are loaded directly); skipped elsewhere. The numbers of the last full run are in
experiments/results/metric_parity.json.
"""

import importlib.util
from pathlib import Path

import pytest

from dowser import metrics

if importlib.util.find_spec("lmms_eval") is None or importlib.util.find_spec("loguru") is None:
    pytest.skip("lmms-eval (and loguru) not installed", allow_module_level=True)

_spec = importlib.util.spec_from_file_location(
    "metric_parity", Path(__file__).parents[1] / "experiments" / "metric_parity.py")
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)


def test_vqa_accuracy_equals_lmms_eval_on_20000_draws():
    processor = parity.lmms_eval_file("tasks/_task_utils/vqa_eval_metric.py").EvalAIAnswerProcessor()
    draws = parity.vqa_draws()
    assert len(draws) == 20_000
    diffs = [(p, a) for p, a in draws
             if metrics.vqa_accuracy(p, a) != pytest.approx(parity.lmms_vqa_accuracy(processor, p, a))]
    assert diffs == []


def test_option_letter_equals_lmms_eval_mmbench():
    evaluator = parity.lmms_eval_file("tasks/mmbench/mmbench_evals.py").MMBench_Evaluator()
    extract = parity.lmms_eval_file("tasks/_task_utils/mcq_extract.py").extract_mcq_answer
    cases = parity.mmbench_cases()
    assert len(cases) >= 700
    diffs = [(p, c) for p, c in cases if metrics.extract_option_letter(p, c)
             != parity.lmms_mmbench_letter(evaluator, extract, p, c)]
    assert diffs == []
