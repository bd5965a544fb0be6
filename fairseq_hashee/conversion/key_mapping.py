"""Hugging Face CPT / BART parameter names -> fairseq (HashEE) parameter names.

Each family is a list of rules: a regular expression over the Hugging Face
name and what becomes of a match (a fairseq name, or a reason to drop it). A
name no rule matches is unexpected, and the checkpoint is refused with those
names listed: a converter that guesses would restore a model silently wrong.

Only the generation path is kept: CPT's understanding decoder (the top BERT
layers) is dropped. Word embeddings, decoder input embeddings and the output
projection are one matrix in fairseq's BART and in these checkpoints. A file
may hold that matrix under every one of its names (``torch.save`` of a state
dict) or under one only (``safetensors.torch.save_model`` keeps
``lm_head.weight``, ``save_pretrained`` keeps ``model.shared.weight``); any one
is enough, and copies that are present must be equal.

Config options that change what the model computes become fairseq model
options, or the checkpoint is refused naming the option: the fairseq model is
built from the printed command alone (``model.pt`` carries no options), so an
option that command cannot say would be lost silently.
"""

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from ..errors import HashEEError
from .vocabulary import VocabMapping

EMBEDDINGS = "embeddings"  # a tied copy of the word embeddings
Target = Union[str, Tuple[None, str]]  # fairseq name, or (None, why it is dropped)

_BERT_SUBLAYERS = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "self_attn_layer_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "output.LayerNorm": "final_layer_norm",
}
_BART_SUBLAYER = (
    r"((?:self_attn|encoder_attn)\.(?:q|k|v|out)_proj|self_attn_layer_norm|encoder_attn_layer_norm"
    r"|final_layer_norm|fc1|fc2)\.(weight|bias)"
)


@dataclass
class Converted:
    family: str  # "cpt" or "bart"
    state: Dict[str, Tensor]
    args: Dict[str, Union[int, str]]  # fairseq model options the weights need
    dropped: List[str] = field(default_factory=list)


def _rules_cpt(shared_layers: int) -> List[Tuple[str, Callable[[re.Match], Target]]]:
    def bert_layer(m):
        index, sublayer, kind = int(m.group(1)), m.group(2), m.group(3)
        if index >= shared_layers:
            return None, "understanding decoder (not used for generation)"
        return f"encoder.layers.{index}.{_BERT_SUBLAYERS[sublayer]}.{kind}"

    sublayers = "|".join(re.escape(k) for k in _BERT_SUBLAYERS)
    return [
        (r"model\.encoder\.embeddings\.word_embeddings\.weight", lambda m: EMBEDDINGS),
        (r"model\.encoder\.embeddings\.position_embeddings\.weight", lambda m: "encoder.embed_positions.weight"),
        (r"model\.encoder\.embeddings\.token_type_embeddings\.weight", lambda m: "encoder.embed_token_types.weight"),
        (
            r"model\.encoder\.embeddings\.LayerNorm\.(weight|bias)",
            lambda m: f"encoder.layernorm_embedding.{m.group(1)}",
        ),
        (r"model\.encoder\.embeddings\.(position_ids|token_type_ids)", lambda m: (None, "index buffer")),
        (rf"model\.encoder\.encoder\.layer\.(\d+)\.({sublayers})\.(weight|bias)", bert_layer),
        (r"model\.encoder\.pooler\..*", lambda m: (None, "BERT pooler (not used for generation)")),
        (r"model\.(shared|decoder\.embed_tokens)\.weight|lm_head\.weight", lambda m: EMBEDDINGS),
        (
            r"model\.decoder\.(embed_positions\.weight|layernorm_embedding\.(?:weight|bias))",
            lambda m: f"decoder.{m.group(1)}",
        ),
        (
            rf"model\.decoder\.layers\.(\d+)\.{_BART_SUBLAYER}",
            lambda m: f"decoder.layers.{m.group(1)}.{m.group(2)}.{m.group(3)}",
        ),
        (r"final_logits_bias", lambda m: (None, "final_logits_bias")),
    ]


def _rules_bart() -> List[Tuple[str, Callable[[re.Match], Target]]]:
    return [
        (r"model\.(shared|encoder\.embed_tokens|decoder\.embed_tokens)\.weight|lm_head\.weight", lambda m: EMBEDDINGS),
        (
            r"model\.(encoder|decoder)\.(embed_positions\.weight|layernorm_embedding\.(?:weight|bias))",
            lambda m: f"{m.group(1)}.{m.group(2)}",
        ),
        (
            rf"model\.(encoder|decoder)\.layers\.(\d+)\.{_BART_SUBLAYER}",
            lambda m: f"{m.group(1)}.layers.{m.group(2)}.{m.group(3)}.{m.group(4)}",
        ),
        (r"final_logits_bias", lambda m: (None, "final_logits_bias")),
    ]


def detect_family(weights: Dict[str, Tensor], source: str) -> str:
    """By the encoder's layout: the tied word embeddings may be stored only under
    a name both families share (``lm_head.weight``, ``model.shared.weight``)."""
    encoder = [name for name in weights if name.startswith("model.encoder.")]
    if any(name.startswith(("model.encoder.embeddings.", "model.encoder.encoder.")) for name in encoder):
        return "cpt"  # a BERT
    if encoder:
        return "bart"
    sample = ", ".join(sorted(weights)[:5])
    raise HashEEError(f"{source}: neither a CPT nor a BART checkpoint (keys: {sample}, ...)")


def _config_int(config: dict, key: str, source: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or value < 0:
        raise HashEEError(f"{source}/config.json: {key} missing or not a non-negative integer ({value!r})")
    return value


def _config_flag(config: dict, key: str, source: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise HashEEError(f"{source}/config.json: {key} is not true or false ({value!r})")
    return value


# Hugging Face activation_function -> the --activation-fn computing the same function.
# fairseq's "swish" returns the SiLU class instead of applying it, so silu has none.
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "relu": "relu",
    "gelu_new": "gelu_accurate",  # these five are GELU's tanh approximation
    "gelu_fast": "gelu_accurate",
    "gelu_accurate": "gelu_accurate",
    "gelu_pytorch_tanh": "gelu_accurate",
    "gelu_python_tanh": "gelu_accurate",
    "tanh": "tanh",
    "linear": "linear",
}


def _activation(config: dict, source: str) -> str:
    """The --activation-fn of activation_function: both stacks of BART, CPT's decoder only
    (CPT builds its BERT encoder without one: GELU, which hashee_cpt's encoder keeps)."""
    name = config.get("activation_function", "gelu")
    if not isinstance(name, str) or name not in _ACTIVATIONS:
        raise HashEEError(f"{source}/config.json: activation_function {name!r} has no fairseq equivalent here")
    return _ACTIVATIONS[name]


def convert_state(weights: Dict[str, Tensor], config: dict, vocab: VocabMapping, source: str) -> Converted:
    """Rename, reorder and check every tensor; fairseq option values come from the config."""
    family = detect_family(weights, source)
    if config.get("add_final_layer_norm") or config.get("normalize_before"):
        raise HashEEError(f"{source}/config.json: pre-LN / final layer norm (mBART-style) is not BART's layout")
    # Scales BART's token embeddings in both stacks, CPT's in its decoder only
    # (its BERT embedding never scales), as hashee_cpt's --scale-embedding does.
    scale_embedding = _config_flag(config, "scale_embedding", source)
    activation = _activation(config, source)
    start = config.get("decoder_start_token_id")
    eos = int(vocab.order[2])  # the checkpoint id in fairseq's eos slot
    if isinstance(start, int) and start != eos:
        raise HashEEError(
            f"{source}/config.json: decoder_start_token_id {start} is not {eos}, the end-of-sentence "
            "symbol fairseq always starts decoding from"
        )
    decoder_layers = _config_int(config, "decoder_layers", source)
    if family == "cpt":
        # CPT's BERT has encoder_layers layers; generation reads the output of
        # the first encoder_layers - decoder_layers (the rest is the understanding decoder).
        shared = _config_int(config, "encoder_layers", source) - decoder_layers
        if shared < 1:
            raise HashEEError(f"{source}/config.json: encoder_layers must exceed decoder_layers")
        rules = _rules_cpt(shared)
    else:
        shared = _config_int(config, "encoder_layers", source)
        rules = _rules_bart()
    compiled = [(re.compile(pattern), target) for pattern, target in rules]

    state: Dict[str, Tensor] = {}
    tied: Dict[str, Tensor] = {}
    dropped: Dict[str, List[str]] = {}
    unexpected = []
    for name, tensor in weights.items():
        target: Optional[Target] = None
        for pattern, rule in compiled:
            match = pattern.fullmatch(name)
            if match:
                target = rule(match)
                break
        if target is None:
            unexpected.append(name)
        elif target == EMBEDDINGS:
            tied[name] = tensor
        elif isinstance(target, tuple):
            dropped.setdefault(target[1], []).append(name)
        else:
            state[target] = tensor
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:5]) + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else "")
        raise HashEEError(f"{source}: not a {family.upper()} checkpoint this converter knows: unexpected keys {shown}")

    # Tensors the code below reads; any other missing one the strict load names.
    for needed, hf_name in (
        ("encoder.embed_positions.weight", "the encoder's position embeddings"),
        ("decoder.embed_positions.weight", "the decoder's position embeddings"),
    ):
        if needed not in state or state[needed].dim() != 2:
            raise HashEEError(f"{source}: {hf_name} are missing or not a matrix (fairseq name {needed})")
    if state["decoder.embed_positions.weight"].size(0) < 3:
        raise HashEEError(f"{source}: the decoder's position embeddings have fewer than 3 rows (2 are offset)")
    embeddings = _tied_embeddings(tied, source)
    bias = weights.get("final_logits_bias")
    if bias is not None and bool(bias.ne(0).any()):
        raise HashEEError(f"{source}: final_logits_bias is not zero; fairseq's BART output layer has no bias")
    if embeddings.size(0) != len(vocab.order):
        raise HashEEError(
            f"{source}: the word embeddings have {embeddings.size(0)} rows but the vocabulary "
            f"{len(vocab.order)} symbols"
        )
    embeddings = embeddings.index_select(0, vocab.order)
    for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        state[name] = embeddings
    if family == "cpt":
        # BERT positions start at row 0; fairseq's learned positions at padding_idx + 1 = 2.
        positions = state["encoder.embed_positions.weight"]
        state["encoder.embed_positions.weight"] = torch.cat([positions.new_zeros(2, positions.size(1)), positions])
    state = {name: tensor.float().contiguous() for name, tensor in state.items()}

    dim = embeddings.size(1)
    enc_ffn = state["encoder.layers.0.fc1.weight"].size(0) if "encoder.layers.0.fc1.weight" in state else 4 * dim
    dec_ffn = state["decoder.layers.0.fc1.weight"].size(0) if "decoder.layers.0.fc1.weight" in state else 4 * dim
    args = {
        "encoder_layers": shared,
        "decoder_layers": decoder_layers,
        "encoder_embed_dim": dim,
        "decoder_embed_dim": dim,
        "encoder_ffn_embed_dim": enc_ffn,
        "decoder_ffn_embed_dim": dec_ffn,
        "encoder_attention_heads": _config_int(config, "encoder_attention_heads", source),
        "decoder_attention_heads": _config_int(config, "decoder_attention_heads", source),
        "max_source_positions": state["encoder.embed_positions.weight"].size(0) - 2,
        "max_target_positions": state["decoder.embed_positions.weight"].size(0) - 2,
        "activation_fn": activation,
        "scale_embedding": scale_embedding,
    }
    notes = [f"{len(names)} {why} tensors" for why, names in dropped.items()]
    if len(tied) > 1:
        notes.append(f"{len(tied) - 1} tied copies of the word embeddings")
    return Converted(family, state, args, notes)


def _tied_embeddings(tied: Dict[str, Tensor], source: str) -> Tensor:
    if not tied:
        raise HashEEError(f"{source}: no word embeddings in the checkpoint")
    names = sorted(tied, key=lambda name: (name == "lm_head.weight", name))  # the output layer last
    first = tied[names[0]]
    if first.dim() != 2:
        raise HashEEError(f"{source}: {names[0]} is not a matrix of word embeddings")
    for name in names[1:]:
        if tied[name].shape != first.shape or not torch.equal(tied[name], first):
            raise HashEEError(
                f"{source}: {name} differs from {names[0]}; fairseq's BART ties input embeddings and output layer"
            )
    return first
