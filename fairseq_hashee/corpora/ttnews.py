"""TTNews, the NLPCC 2017 single-document summarization task (Toutiao news).

The release has ``toutiao4nlpcc/train_with_summ.txt`` (JSON lines with
``article`` and ``summarization``; paragraphs are marked ``<Paragraph>``),
``train_without_summ.txt`` (articles only, not used) and, published after the
task, ``toutiao4nlpcc_eval/evaluation_with_ground_truth.txt`` in the same format:
that is the test split when present. Without it (the task's own test file
``tasktestdata03.txt`` has no summaries, so it cannot be scored) test examples
are held out of train_with_summ.txt like the validation ones: 4% each by a
seeded shuffle (2,000 of its 50,000 articles; ``--valid-fraction``,
``--test-fraction``, ``--seed``).
"""

from typing import Dict, Iterator

from .records import POOL, Entry, Record, Skip, find_file, json_lines, text_field

NAME = "ttnews"
DESCRIPTION = "NLPCC 2017 TTNews: train_with_summ.txt [+ evaluation_with_ground_truth.txt] (article -> summarization)"
HELD_OUT = {"valid": 0.04, "test": 0.04}
TRAIN = "train_with_summ.txt"
EVALUATION = "evaluation_with_ground_truth.txt"
PARAGRAPH = "<Paragraph>"


def read(raw_dir: str) -> Dict[str, Iterator[Entry]]:
    splits = {POOL: _articles(find_file(raw_dir, TRAIN, "the NLPCC 2017 TTNews training data"))}
    evaluation = find_file(raw_dir, EVALUATION, "", required=False)
    if evaluation:
        splits["test"] = _articles(evaluation)
    return splits


def _articles(path: str) -> Iterator[Entry]:
    for where, item in json_lines(path):
        if item is None:
            yield Skip("empty line", where)
        else:
            article = text_field(item, "article", where).replace(PARAGRAPH, " ")
            yield Record(article, text_field(item, "summarization", where), where)
