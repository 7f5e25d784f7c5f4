"""ShopBench metrics on cases worked out by hand (the starter kit's formulas)."""
from __future__ import annotations

import math

import pytest

from elama.eval import metrics as M


def test_accuracy_and_hit_rate():
    assert M.accuracy(2, 2) == 1.0 and M.accuracy(-1, 0) == 0.0
    # first three answers [6, 9, 1] hold 2 of the 3 truth items
    assert M.hit_rate_3([6, 9, 1, 15], [6, 9, 15]) == pytest.approx(2 / 3)
    assert M.hit_rate_3([], [1]) == 0.0


def test_ndcg_graded_truth():
    # items 1, 2, 3 have relevance 3, 2, 0; answer ranks 2, 1, 3
    dcg = (2**2 - 1) / 1 + (2**3 - 1) / math.log2(3) + 0
    idcg = (2**3 - 1) / 1 + (2**2 - 1) / math.log2(3) + 0
    assert M.ndcg([2, 1, 3], [3, 2, 0]) == pytest.approx(dcg / idcg)
    assert M.ndcg([1, 2, 3], [3, 2, 0]) == pytest.approx(1.0)
    # an unknown item gains 0; answers beyond len(truth) are cut
    assert M.ndcg([4, 1], [3, 2, 0]) == pytest.approx(((2**3 - 1) / math.log2(3)) / idcg)
    assert M.ndcg([2, 1, 3, 9, 9], [3, 2, 0]) == pytest.approx(dcg / idcg)
    assert M.ndcg([], [1.0, 0.0]) == 0.0 and M.ndcg([1], [0, 0]) == 0.0


def test_entity_counts_case_and_repeats():
    # answered: nike, nike, adidas; truth nike, puma -> tp 1, fp 3-1, fn 2-1
    assert M.entity_counts(["Nike ", "nike", "Adidas"], ["nike", "Puma"]) == (1, 2, 1)


def test_micro_f1_pools_over_the_task():
    rows = [(2, 0, 0), (0, 1, 1)]  # per-row F1 1 and 0 would average to 0.5
    assert M.micro_f1(rows) == pytest.approx(2 / 3)
    assert M.micro_f1([(0, 0, 3)]) == 0.0 and M.micro_f1([(0, 0, 0)]) == 0.0


def test_rougel_uses_the_stemmer():
    # stems: the cat are run | the cat run -> LCS 3, P 3/4, R 1
    assert M.rougel("the cats are running", "the cat runs") == pytest.approx(2 * 0.75 / 1.75)


def test_bleu_first_line_lowercased():
    assert M.bleu("The Cat sat on the mat\nGARBAGE here", "the cat sat on the mat") == pytest.approx(1.0)
    assert M.bleu("\n\nTHE CAT SAT ON THE MAT\n", "the cat sat on the mat") == pytest.approx(1.0)
    # precisions 5/6, 3/5, 2/4, 1/3 at equal length (no brevity penalty)
    assert M.bleu("the cat sat on a mat", "the cat sat on the mat") == pytest.approx((1 / 12) ** 0.25)


def test_jp_bleu_tokenizes_with_mecab():
    ref = "私は犬が好きです"
    assert M.jp_bleu(ref, ref) == pytest.approx(1.0)
    # 13a sees one token per sentence (no match); MeCab sees 私/は/猫|犬/が/好き/です:
    # precisions 5/6, 3/5, 1/4 and 0/3 smoothed (sacrebleu "exp") to 1/(2*3)
    assert M.bleu("私は猫が好きです", ref) == pytest.approx(0.0)
    assert M.jp_bleu("私は猫が好きです", ref) == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)


def test_sentence_transformer_scores():
    same = M.cosine_scores(M.ENGLISH_MODEL, ["a red running shoe"], ["a red running shoe"])
    assert same == [pytest.approx(1.0, abs=1e-5)]
    a, b = M.cosine_scores(M.ENGLISH_MODEL, ["red shoe", "red shoe"], ["red sneaker", "tax law"])
    assert 0 <= b < a < 1
    [mean] = M.cosine_scores(M.ENGLISH_MODEL, ["red shoe"], [["red sneaker", "tax law"]])
    assert mean == pytest.approx((a + b) / 2, abs=1e-6)


def test_multilingual_model_missing_names_it(monkeypatch):
    monkeypatch.delenv(M.MULTILINGUAL_ENV, raising=False)
    with pytest.raises(M.MetricError, match="paraphrase-multilingual-MiniLM-L12-v2.*--multilingual-model"):
        M.sentence_model_path(M.MULTILINGUAL_MODEL)


@pytest.mark.parametrize("metric, truth, ok", [
    ("accuracy", 1, True), ("accuracy", True, False), ("accuracy", "1", False),
    ("hit rate@3", [1, 2], True), ("hit rate@3", [], False), ("ndcg", [1.0, 0], True),
    ("micro f1", ["a"], True), ("micro f1", "a", False), ("rougel", "x", True),
    ("sent-transformer", ["x", "y"], True), ("sent-transformer", [], False), ("bleu", ["x"], False),
])
def test_truth_checks(metric, truth, ok):
    assert (M.truth_problem(metric, truth) is None) == ok
