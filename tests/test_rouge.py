"""hashee-rouge: English equals rouge-score's own scorer; Chinese equals values computed by hand."""

import json

import pytest
from rouge_score import rouge_scorer

from fairseq_hashee.cli.rouge import main
from fairseq_hashee.rouge import rouge

HYPS = [
    "The cat sat on the mat. It was happy.",
    "Police arrested two men in the city on Monday.",
    "Rain floods the streets.",
]
REFS = [
    "A cat was sitting on the mat. The cat looked happy.",
    "Two men were arrested by police on Monday.",
    "Heavy rain flooded streets in the town. Crews rescued nine people.",
]


def _sentences(text):
    # the split rouge.py must make for ROUGE-Lsum, written out by hand for these texts
    return {
        HYPS[0]: "The cat sat on the mat.\nIt was happy.",
        REFS[0]: "A cat was sitting on the mat.\nThe cat looked happy.",
        REFS[2]: "Heavy rain flooded streets in the town.\nCrews rescued nine people.",
    }.get(text, text)


def test_english_equals_rouge_score_with_stemming_and_lsum():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = dict.fromkeys(["rouge1", "rouge2", "rougeL", "rougeLsum"], 0.0)
    for hyp, ref in zip(HYPS, REFS):
        plain = scorer.score(ref, hyp)
        split = scorer.score(_sentences(ref), _sentences(hyp))
        for name in ("rouge1", "rouge2", "rougeL"):
            expected[name] += 100 * plain[name].fmeasure / len(HYPS)
        expected["rougeLsum"] += 100 * split["rougeLsum"].fmeasure / len(HYPS)
    assert rouge(HYPS, REFS, "en") == pytest.approx(expected, abs=1e-9)
    # stemming is on: "flooded" matches "floods"
    assert rouge(["floods"], ["flooded"])["rouge1"] == 100.0


def test_scores_are_deterministic():
    assert rouge(HYPS, REFS) == rouge(HYPS, REFS)


# Reference 我们今天去公园, hypothesis 今天我们去公园.
# Characters: 7 tokens each, all shared -> R1 100. Bigrams (6 each): 我们 今天 去公 公园 shared -> R2 4/6.
# LCS: 今天去公园 (5 of 7) -> RL 5/7.
# jieba: 我们/今天/去/公园 vs 今天/我们/去/公园 -> R1 100; bigrams (去, 公园) shared, 1 of 3 -> R2 1/3;
# LCS 3 of 4 words -> RL 3/4.
ZH_REF, ZH_HYP = "我们今天去公园", "今天我们去公园"


def test_chinese_by_characters_by_hand():
    scores = rouge([ZH_HYP], [ZH_REF], "zh", "char")
    assert scores == pytest.approx({"rouge1": 100.0, "rouge2": 400 / 6, "rougeL": 500 / 7})


def test_chinese_by_jieba_words_by_hand():
    scores = rouge([ZH_HYP], [ZH_REF], "zh", "jieba")
    assert scores == pytest.approx({"rouge1": 100.0, "rouge2": 100 / 3, "rougeL": 75.0})


def test_chinese_characters_keep_latin_words_whole_as_cpt_scores():
    # Units: 苹 果 发 布 iphone 手 机 (reference) and 苹 果 发 布 iphone (hypothesis): the Latin
    # word is one unit, lowercased. P = 5/5, R = 5/7 -> F1 = 2 * 5 / (5 + 7).
    scores = rouge(["苹果发布iPhone"], ["苹果发布IPHONE手机"], "zh", "char")
    assert scores["rouge1"] == pytest.approx(100 * 10 / 12)


def test_chinese_scored_as_english_is_refused_not_zero():
    with pytest.raises(ValueError, match="no ASCII letters or digits .*--lang zh"):
        rouge([ZH_HYP], [ZH_REF], "en")


def test_cli_writes_json_and_reports_bad_input_on_one_line(tmp_path, capsys):
    hyp, ref, out = tmp_path / "hyp", tmp_path / "ref", tmp_path / "rouge.json"
    hyp.write_text(ZH_HYP + "\n", encoding="utf-8")
    ref.write_text(ZH_REF + "\n", encoding="utf-8")
    main(["--hyp", str(hyp), "--ref", str(ref), "--lang", "zh", "--json", str(out)])
    assert "ROUGE-1: 100.00 ROUGE-2: 66.67 ROUGE-L: 71.43" in capsys.readouterr().out
    assert json.loads(out.read_text())["rouge2"] == pytest.approx(400 / 6)

    with pytest.raises(SystemExit, match=r"^error: .*ref: 1 reference\(s\) have no ASCII letters"):
        main(["--hyp", str(hyp), "--ref", str(ref)])
    ref.write_text(ZH_REF + "\n" + ZH_REF + "\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"^error: .*hyp has 1 lines but .*ref has 2$"):
        main(["--hyp", str(hyp), "--ref", str(ref), "--lang", "zh"])
