"""dowser.metrics against hand-computed values."""

import math

import pytest

from dowser import metrics as M


# --- VQA accuracy ---------------------------------------------------------------------
def test_vqa_two_of_ten_matching_is_point_six():
    # Leaving out one of the 2 matches: 1/3 (2 subsets); any other: 2/3 (8 subsets).
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    refs = ["cat", "cat"] + ["dog"] * 8
    assert M.vqa_accuracy("cat", refs) == pytest.approx(0.6)


def test_vqa_three_or_more_matching():
    assert M.vqa_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)  # (3*2/3+7)/10
    assert M.vqa_accuracy("2", ["2"] * 4 + ["3"] * 6) == pytest.approx(1.0)
    assert M.vqa_accuracy("5", ["2"] * 10) == 0.0


def test_vqa_normalization_numbers_articles_punctuation():
    assert M.normalize_vqa_answer("The Two dogs.") == "2 dogs"
    assert M.normalize_vqa_answer("dont") == "don't"
    assert M.normalize_vqa_answer("1,000") == "1000"
    assert M.vqa_accuracy("two", ["2"] * 10) == 1.0
    assert M.vqa_accuracy("A dog!", ["dog"] * 10) == 1.0


def test_vqa_single_reference_is_exact_match():
    assert M.vqa_accuracy("Yes", ["yes"]) == 1.0
    assert M.vqa_accuracy("no", ["yes"]) == 0.0
    with pytest.raises(ValueError):
        M.vqa_accuracy("x", [])


# --- exact match ----------------------------------------------------------------------
def test_exact_match_ignores_case_punctuation_space():
    assert M.exact_match("  Red.", "red") == 1.0
    assert M.exact_match("left of", ["right", "Left  of!"]) == 1.0
    assert M.exact_match("red circle", "red") == 0.0


# --- option letters -------------------------------------------------------------------
@pytest.mark.parametrize("pred,letter", [
    ("B", "B"), ("(C) a cat", "C"), ("D.", "D"), ("The answer is A. teddy bear", "A"),
    ("Answer: B", "B"), ("a cute cat", "B"), ("no idea", None),
    # Two bare letters: MMBench's matcher gives up; lmms-eval's fallback takes the first.
    ("A B", "A"),
    # A bare "A" in a long answer may be the article: only a wrapped letter counts.
    ("A big dog, so B.", "B"),
    # The matcher reads "ABCDE" whatever the options (lmms-eval num_choice=5).
    ("E", "E"),
])
def test_extract_option_letter(pred, letter):
    assert M.extract_option_letter(pred, ["dog", "cat", "bird", "fish"]) == letter


@pytest.mark.parametrize("pred,letter", [
    ("答案是B", "B"), ("答案：C", "C"), ("选项C。", "C"), ("答案为D", "D"), ("我选A", "A"),
    ("正确答案是 B", "B"), ("（C）", "C"), ("答：D", "D"), ("狗", "B"), ("B。狗", "B"),
    ("我不知道", None),
])
def test_extract_option_letter_chinese(pred, letter):
    assert M.extract_option_letter(pred, ["猫", "狗", "鸟", "鱼"]) == letter


def test_rule_matcher_alone_cannot_read_chinese():
    """Why the fallback is needed: MMBench's own rules see no letter token in these."""
    for pred in ["答案是B", "答案：C", "选项C。"]:
        assert M.can_infer_option(pred) is None and M.can_infer_text(pred, ["猫", "狗"]) is None


def test_fallback_priorities():
    # start (10) beats phrase (7): lmms-eval's order, not "the last letter mentioned"
    assert M.extract_mcq_letter("B is wrong, the answer is C", "ABCD") == "B"
    assert M.extract_mcq_letter("I think (C), maybe", "ABCD") == "C"
    assert M.extract_mcq_letter("x", "ABCD") is None and M.extract_mcq_letter("  ", "AB") is None


def test_circular_accuracy_needs_every_shift_right():
    records = [("q1", 1), ("q1", 1), ("q2", 1), ("q2", 0), ("q3", 0)]
    assert M.circular_accuracy(records) == pytest.approx(1 / 3)
    assert M.circular_accuracy([("a", 1), ("b", 0)]) == 0.5  # no copies: plain accuracy


# --- CIDEr-D --------------------------------------------------------------------------
def test_cider_identical_captions_is_ten():
    # Disjoint 4+-word captions: every n-gram has idf log(2), cosine 1 for n = 1..4,
    # no length penalty: mean 1, times pycocoevalcap's factor 10.
    refs = {"1": ["two red circles on the left"], "2": ["one blue square at top"]}
    preds = {k: v[0] for k, v in refs.items()}
    assert M.cider_d(preds, refs) == pytest.approx(10.0)


def test_cider_partial_and_wrong():
    refs = {"1": ["two red circles on the left"], "2": ["one blue square at top"]}
    good = M.cider_d({"1": "two red circles on the left", "2": "green"}, refs)
    assert good == pytest.approx(5.0)  # one perfect image, one zero: mean 5
    assert M.cider_d({"1": "x", "2": "y"}, refs) == 0.0
    with pytest.raises(ValueError, match="no references"):
        M.cider_d({"3": "x"}, refs)


# --- summary scores -------------------------------------------------------------------
def test_h_score_avg():
    assert M.h_score(50, 100) == pytest.approx(66.6667, abs=1e-4)
    assert M.h_score(0, 0) == 0.0
    assert M.avg(50, 100) == 75.0
    # Paper Table 1, Dowser on COCO: A_up 62.7 (mean of its six), A_down 135.5 -> H 85.7
    up = [69.3, 48.6, 68.8, 77.7, 50.8, 60.7]
    assert M.a_up(up) == pytest.approx(62.65, abs=0.01)
    assert M.h_score(M.a_up(up), 135.5) == pytest.approx(85.7, abs=0.05)
    assert M.a_down({"coco": 100.0, "imagenet-r": 50.0}) == 75.0


def test_continual_metrics_hand_computed():
    acc = [[80, 10, 5],
           [60, 70, 8],
           [50, 55, 90]]
    assert M.mft(acc) == pytest.approx(80.0)  # (80 + 70 + 90) / 3
    assert M.mfn(acc) == pytest.approx(65.0)  # (50 + 55 + 90) / 3
    assert M.maa(acc) == pytest.approx((80 + 65 + 65) / 3)  # rows: 80, (60+70)/2, 65
    assert M.bwt(acc) == pytest.approx(((50 - 80) + (55 - 70)) / 2)
    assert math.isnan(M.bwt([[1.0]]))
    with pytest.raises(ValueError, match="square"):
        M.mft([[1, 2]])
