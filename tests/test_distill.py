"""The distillation recipe for decoder hash exits (criterions/distill.py): its loss against a hand
computation, the teacher kept out of the parameters, and its refusals."""

import pytest
import torch
import torch.nn.functional as F

from fairseq_hashee.criterions import distill
from fairseq_hashee.criterions.distill import DistillCriterion
from fairseq_hashee.errors import HashEEError

from helpers import TinyTask, build_hashee, random_tables, tiny_dictionary, training_sample


@pytest.fixture
def teacher_file(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save({"model": {}}, path)
    return str(path)


def _criterion(dictionary, teacher_file, teacher, weight, monkeypatch):
    # The first forward loads the teacher from its file (a tiny model built here instead).
    loaded = []
    monkeypatch.setattr(
        distill.checkpoint_utils, "load_model_ensemble", lambda paths, task: loaded.append(paths) or ([teacher], None)
    )
    return DistillCriterion(TinyTask(dictionary), False, 0.1, distill_from=teacher_file, distill_weight=weight), loaded


def test_loss_is_the_weighted_sum_of_label_smoothing_and_the_teachers_kl(teacher_file, monkeypatch):
    dictionary = tiny_dictionary()
    student, teacher = build_hashee(dictionary, seed=0, layers=3), build_hashee(dictionary, seed=1, layers=3)
    random_tables(student, torch.Generator().manual_seed(0))  # the student's positions exit early
    sample = training_sample(dictionary)
    weight = 0.3
    criterion, loaded = _criterion(dictionary, teacher_file, teacher.train(), weight, monkeypatch)
    loss, sample_size, logs = criterion(student.train(), sample)
    criterion(student, sample)
    assert loaded == [[teacher_file]]  # once

    with torch.no_grad():
        target = sample["target"].view(-1)
        live = target.ne(dictionary.pad())
        lprobs = F.log_softmax(student(**sample["net_input"])[0], dim=-1).view(-1, len(dictionary))[live]
        teacher_probs = F.softmax(teacher(**sample["net_input"])[0], dim=-1).view(-1, len(dictionary))[live]
        nll = -lprobs.gather(1, target[live, None]).sum()
        spread = 0.1 / (len(dictionary) - 1)  # fairseq's label smoothing: eps / (V - 1) on every symbol
        smoothed = (1 - 0.1 - spread) * nll + spread * -lprobs.sum()
        kl = (teacher_probs * (teacher_probs.log() - lprobs)).sum()
    assert torch.allclose(logs["distill_kl"], kl, rtol=1e-4)
    assert torch.allclose(loss, (1 - weight) * smoothed + weight * kl, rtol=1e-4)
    assert sample_size == sample["ntokens"]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_the_teacher_is_no_parameter_of_the_criterion(teacher_file, monkeypatch):
    dictionary = tiny_dictionary()
    criterion, _ = _criterion(dictionary, teacher_file, build_hashee(dictionary, layers=2), 0.5, monkeypatch)
    criterion(build_hashee(dictionary, layers=2), training_sample(dictionary))
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}


@pytest.mark.parametrize(
    "source, weight, message",
    [
        ("", 0.5, "--criterion hashee_distill needs --distill-from"),
        ("teacher", 1.5, "--distill-weight: must be in 0..1, got 1.5"),
        ("/nonexistent/teacher.pt", 0.5, "/nonexistent/teacher.pt: no such checkpoint file"),
    ],
)
def test_refusals(teacher_file, source, weight, message):
    source = teacher_file if source == "teacher" else source
    with pytest.raises(HashEEError, match=message):
        DistillCriterion(TinyTask(tiny_dictionary()), False, 0.1, distill_from=source, distill_weight=weight)
