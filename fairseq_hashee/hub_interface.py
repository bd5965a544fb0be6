"""Summarize documents from Python with a trained HashEE checkpoint, as fairseq's BART hub does.

    from fairseq_hashee.hub_interface import HashEESummarizer

    model = HashEESummarizer.from_pretrained(
        "work/checkpoints", checkpoint_file="checkpoint_best.pt",
        data_name_or_path="work/data-bin",   # the dict.source.txt / dict.target.txt it was trained with
        subwords_dir="bart.large")           # encoder.json + vocab.bpe, or CPT's vocab.txt
    result = model.summarize(documents, beam=4, lenpen=2.0, max_len_b=140, min_len=55,
                             no_repeat_ngram_size=3)
    result.summaries     # one string per document
    result.report()      # 'speed-up (FLOPs): encoder 3.30x, decoder 1.00x, total 1.80x; ...'

Documents are encoded exactly as the pipelines in examples/ encode them
(tokenization/subwords.py), cut to the model's source positions (counted in
``result.truncated``), and decoded back to text. The speed-up counts the FLOPs
of this call's beam search, the way fairseq-generate reports them.
"""

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fairseq import hub_utils, utils
from fairseq.hub_utils import GeneratorHubInterface
from omegaconf import open_dict

from .errors import HashEEError
from .modules import flops
from .tokenization.subwords import load_subwords


@dataclass
class Summaries:
    summaries: List[str]
    speedup: Dict[str, float]  # flops.speedup_report: enc/dec/total_speedup, enc/dec_mean_exit, dec_calls
    truncated: int  # documents cut to the model's source positions

    def report(self) -> str:
        return flops.format_report(self.speedup)


class HashEESummarizer(GeneratorHubInterface):
    """fairseq's GeneratorHubInterface with the subword encoding of the checkpoint's data."""

    def __init__(self, cfg, task, models, subwords):
        super().__init__(cfg, task, models)
        self.subwords = subwords

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str,
        checkpoint_file: str = "checkpoint_best.pt",
        data_name_or_path: str = ".",
        subwords_dir: Optional[str] = None,
        subwords: Optional[str] = None,
        **overrides,
    ) -> "HashEESummarizer":
        """Load ``model_dir/checkpoint_file``.

        ``data_name_or_path``: the folder with the dictionaries (fairseq's
        convention: relative to model_dir when it starts with "."; else a path).
        ``subwords_dir``: where the subword files are (default model_dir);
        ``subwords``: "gpt2", "wordpiece" or "sentencepiece" when the folder
        holds several. Other keyword arguments override the checkpoint's options.
        """
        loaded = hub_utils.from_pretrained(model_dir, checkpoint_file, data_name_or_path, **overrides)
        encoding = load_subwords(subwords_dir or model_dir, subwords)
        return cls(loaded["args"], loaded["task"], loaded["models"], encoding)

    def _encode(self, document: str) -> Tuple[torch.LongTensor, bool]:
        pieces = self.subwords.pieces(document)
        limit = self.max_positions[0] - 1  # the dictionary appends </s>
        cut = len(pieces) > limit
        line = " ".join(pieces[:limit])
        return self.src_dict.encode_line(line, add_if_not_exist=False, append_eos=True).long(), cut

    def encode(self, sentence: str) -> torch.LongTensor:
        return self._encode(sentence)[0]

    def decode(self, tokens: torch.LongTensor) -> str:
        # Dictionary.string drops <s> and </s>; <unk> stays visible.
        return self.subwords.text(self.tgt_dict.string(tokens).split())

    def summarize(
        self,
        documents: Sequence[str],
        beam: int = 4,
        lenpen: float = 1.0,
        max_len_b: int = 200,
        min_len: int = 1,
        no_repeat_ngram_size: int = 0,
        **generation,
    ) -> Summaries:
        """Beam-search summaries of ``documents`` (in order) and the FLOPs speed-up of computing them.

        Other keyword arguments are fairseq generation options (max_len_a, unkpen, ...).
        """
        if isinstance(documents, str):
            raise HashEEError("summarize takes a list of documents, not one string")
        if not documents:
            return Summaries([], flops.speedup_report({}), 0)
        encoded = [self._encode(document) for document in documents]
        gen_args = copy.deepcopy(self.cfg.generation)
        with open_dict(gen_args):
            options = dict(
                beam=beam,
                lenpen=lenpen,
                max_len_b=max_len_b,
                min_len=min_len,
                no_repeat_ngram_size=no_repeat_ngram_size,
                **generation,
            )
            for key, value in options.items():
                setattr(gen_args, key, value)
        generator = self.task.build_generator(self.models, gen_args)
        summaries: Dict[int, str] = {}
        # The generator runs directly (not through task.inference_step) so that
        # the meter counts exactly this call.
        with torch.no_grad(), flops.measuring(self.models) as meter:
            for batch in self._build_batches([tokens for tokens, _ in encoded], False):
                batch = utils.apply_to_sample(lambda t: t.to(self.device), batch)
                for index, hypos in zip(batch["id"].tolist(), generator.generate(self.models, batch)):
                    summaries[index] = self.decode(hypos[0]["tokens"])
        return Summaries(
            [summaries[i] for i in range(len(documents))],
            flops.speedup_report(meter.sums),
            sum(cut for _, cut in encoded),
        )
