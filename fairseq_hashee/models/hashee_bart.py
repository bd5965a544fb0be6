"""HashEE BART: fairseq's BART with hash-based early exiting in both stacks.

Everything but the two stacks is fairseq's ``BARTModel``, so parameter names
are BART's and ``--restore-file bart.base/model.pt`` restores a released
checkpoint; the exit tables (``encoder.exit_table``, ``decoder.exit_table``)
are the only additions, and a checkpoint that lacks them keeps the tables the
task built (rebuilt from the checkpoint's embeddings for the cluster hash).
"""

import logging

import torch
from fairseq.models import register_model, register_model_architecture
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture, bart_large_architecture
from fairseq.models.transformer import TransformerConfig

from ..checkpoints import describe_mismatch, describe_shape
from ..errors import HashEEError
from ..exits import RULES, build_exit_rule
from ..exits.consistentee import DEFAULT_POLICY_DIM
from ..exits.heads import HEAD_ARCHS, HEAD_KINDS, UNCHOSEN
from ..exits.rules import CONFIDENCE_MEASURES
from .hashee_transformer import EXIT_IMPLS, HashEEDecoder, HashEEEncoder
from .initialization import WEIGHT_INITS, transformer_init
from .truncation import truncate_stack

logger = logging.getLogger(__name__)

# Options of fairseq's Transformer whose code paths the exit loop does not go through.
_UNSUPPORTED = {
    "encoder_layerdrop": "layer drop",
    "decoder_layerdrop": "layer drop",
    "checkpoint_activations": "activation checkpointing",
    "cross_self_attention": "cross+self attention",
    "scale_attn": "attention scaling (NormFormer)",
    "scale_fc": "FFN scaling (NormFormer)",
    "scale_heads": "head scaling (NormFormer)",
    "scale_resids": "residual scaling (NormFormer)",
    "base_layers": "BASE layers",
    "adaptive_softmax_cutoff": "adaptive softmax",
}


def check_supported(args) -> None:
    for name, what in _UNSUPPORTED.items():
        if getattr(args, name, None):
            raise HashEEError(f"--{name.replace('_', '-')}: {what} is not supported by HashEE models")


@register_model("hashee_bart")
class HashEEBARTModel(BARTModel):
    @staticmethod
    def add_args(parser):
        BARTModel.add_args(parser)
        parser.add_argument(
            "--exit-impl",
            choices=EXIT_IMPLS,
            help="how exited tokens are skipped: 'skip' computes only active tokens "
            "(default); 'masked' computes every token and discards exited updates "
            "(slow reference for tests)",
        )
        parser.add_argument(
            "--decoder-exit-rule",
            choices=RULES,
            help="a dynamic rule that exits decoder positions while they are computed "
            "(docs/design.md section 7): 'confidence' is CALM's, 'dat-halting' and 'dat-multinomial' "
            "DAT's, 'consistentee' ConsistentEE's exit policies, 'agreement' the comparison of successive "
            "exits standing in for LECO's COBEE, 'free' FREE's shallow-deep exit with synchronized parallel "
            "decoding; default none",
        )
        parser.add_argument(
            "--shallow-exit-layer",
            type=int,
            metavar="S",
            help="the free rule's shallow exit: after decoder layer S (default: a quarter of the decoder, "
            "FREE's 6 of 24, at least 1)",
        )
        parser.add_argument(
            "--consistentee-policy-dim",
            type=int,
            metavar="N",
            help="hidden size of the consistentee rule's policy network per layer, Linear(d, N), GELU, "
            "Linear(N, 1) (default 32, the authors' BERT code); 0: one Linear(d, 1) (their LLaMA code)",
        )
        parser.add_argument(
            "--exit-confidence",
            choices=CONFIDENCE_MEASURES,
            help="the confidence rule's measure: softmax response (default), state saturation, "
            "or a meta classifier (trained with --criterion calm_exit_classifier)",
        )
        parser.add_argument(
            "--exit-heads",
            choices=HEAD_KINDS,
            help="next-token heads of the decoder's layers: the shared output projection (default), "
            "one per layer initialised from it, LECO's architecture search over shared/linear/mlp/pooler heads "
            "('search', with --criterion leco_head_search) or the heads a search chose ('searched', restored "
            "from the search's checkpoint or any later one)",
        )
        for stack in ("encoder", "decoder"):
            parser.add_argument(
                f"--keep-{stack}-layers",
                metavar="SPEC",
                help=f"restoring a checkpoint whose {stack} has more layers than --{stack}-layers (static "
                "truncation, e.g. BART-6L): keep the first ones (default), 'spread' (evenly spaced, "
                "the last included) or these 1-based layers, e.g. 1,3,5",
            )
        parser.add_argument(
            "--weight-init",
            choices=WEIGHT_INITS,
            help="initialisation of a model trained from scratch: BART's N(0, 0.02) (default) or fairseq "
            "Transformer's (xavier, N(0, d^-1/2) embeddings), which small widths need to learn to read the "
            "source (models/initialization.py); a restored checkpoint replaces either",
        )
        parser.add_argument(
            "--scale-embedding",
            action="store_true",
            help="multiply token embeddings by sqrt(embed dim) (Hugging Face scale_embedding: true); "
            "fairseq's BART archs never do, and --no-scale-embedding can only say no",
        )

    @classmethod
    def build_model(cls, args, task):
        check_supported(args)
        model = super().build_model(args, task)
        if args.weight_init == "transformer":
            transformer_init(model)
        # BART initialises every Linear of the model: the searched heads start as exits/heads.py says.
        model.decoder.exit_heads.init_candidates(model.decoder.output_projection)
        return model

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return HashEEEncoder(TransformerConfig.from_namespace(args), src_dict, embed_tokens, args.exit_impl)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        return HashEEDecoder(
            cfg,
            tgt_dict,
            embed_tokens,
            no_encoder_attn=cfg.no_cross_attention,
            exit_impl=args.exit_impl,
            exit_rule=build_exit_rule(args, cfg.decoder.embed_dim, cfg.decoder.layers),
            exit_heads=args.exit_heads,
        )

    def upgrade_state_dict_named(self, state_dict, name):
        super().upgrade_state_dict_named(state_dict, name)
        prefix = name + "." if name else ""
        for stack in (self.encoder, self.decoder):
            option = f"keep_{stack.stack_name}_layers"
            truncate_stack(
                state_dict,
                f"{prefix}{stack.stack_name}.",
                stack,
                getattr(self.args, option, "first"),
                "--" + option.replace("_", "-"),
            )
            state_dict.setdefault(f"{prefix}{stack.stack_name}.full_depth", stack.full_depth.clone())
            key = f"{prefix}{stack.stack_name}.exit_table"
            embeddings = state_dict.get(f"{prefix}{stack.stack_name}.embed_tokens.weight")
            recipe = stack.exit_table_recipe
            if (
                key not in state_dict
                and recipe is not None
                and recipe.needs_embeddings
                and embeddings is not None
                and embeddings.size(0) == len(stack.dictionary)  # else load_state_dict names the misfit
            ):
                table = recipe.build(embeddings.detach().float().cpu().numpy(), "restored embeddings").table
                logger.info(
                    f"checkpoint has no {key}; hashing its {stack.stack_name} embeddings: {recipe.histogram(table)}"
                )
                state_dict[key] = torch.from_numpy(table)
            elif key not in state_dict:
                logger.info(f"checkpoint has no {key}; keeping the table built by the task")
                state_dict[key] = stack.exit_table.clone()
            elif (
                stack.exit_table_source is not None
                and state_dict[key].shape == stack.exit_table.shape
                and not torch.equal(state_dict[key].to(stack.exit_table), stack.exit_table)
            ):
                # Resuming must keep the exits the model was trained with.
                logger.warning(f"using the checkpoint's {key}, not the table {stack.exit_table_source} built")
        self._upgrade_exit_parameters(state_dict, prefix)

    # Set by the task when it builds the model to train (not to generate): a
    # rule's parameters missing from the restored checkpoint may then start fresh.
    exit_parameters_may_start_fresh = False

    def _upgrade_exit_parameters(self, state_dict, prefix: str) -> None:
        """Exit heads and rule parameters the checkpoint lacks (a released BART has none).

        Per-layer heads start from the checkpoint's output projection. A rule's
        own parameters (CALM's classifier) start fresh when fine-tuning; to
        generate, a checkpoint must have them.
        """
        if self.decoder.exit_heads.kind == "searched":
            self._upgrade_searched_heads(state_dict, prefix)
        ours = self.decoder.state_dict(prefix=f"{prefix}decoder.")
        unused = [k for k in state_dict if k.startswith(f"{prefix}decoder.exit_rule.") and k not in ours]
        if unused:
            # A model built without the checkpoint's rule (e.g. --model-overrides to compare with full depth).
            logger.info(f"not using the checkpoint's exit rule parameters: {', '.join(unused)}")
            for key in unused:
                del state_dict[key]
        if self.decoder.exit_heads.kind in ("shared", "per-layer"):
            unused = [k for k in state_dict if k.startswith(f"{prefix}decoder.exit_heads.") and k not in ours]
            if unused:
                # e.g. a searched model compared with the shared projection (--model-overrides)
                logger.info(f"not using the checkpoint's exit head parameters: {', '.join(unused)}")
                for key in unused:
                    del state_dict[key]
        missing = [k for k in ours if (".exit_heads." in k or ".exit_rule." in k) and k not in state_dict]
        projection = state_dict.get(
            f"{prefix}decoder.output_projection.weight", state_dict.get(f"{prefix}decoder.embed_tokens.weight")
        )
        for key in missing:
            if ".exit_heads." in key and projection is not None and projection.shape == ours[key].shape:
                state_dict[key] = projection.clone()
            elif self.exit_parameters_may_start_fresh:
                state_dict[key] = ours[key].clone()
            elif ".exit_heads." in key:
                raise HashEEError(
                    f"the checkpoint has no {key}, which the model's exit heads (--exit-heads "
                    f"{self.decoder.exit_heads.kind}) need"
                )
            else:
                rule = self.decoder.exit_rule
                raise HashEEError(
                    f"the checkpoint has no {key}, which the {rule.name} exit rule needs; train it first "
                    f"(--criterion {rule.trained_by})"
                )

    def _upgrade_searched_heads(self, state_dict, prefix: str) -> None:
        """Keep the exit heads the checkpoint chose, or its search's ``argmax alpha`` (LECO, exits/heads.py)."""
        heads = self.decoder.exit_heads
        key, alpha_key = f"{prefix}decoder.exit_heads.choice", f"{prefix}decoder.exit_heads.alpha"
        choice = state_dict.get(key)
        if choice is not None and bool((choice != UNCHOSEN).all()):
            source = "the checkpoint's"
        elif alpha_key in state_dict:
            alpha = state_dict[alpha_key]
            if alpha.dim() != 2 or alpha.size(1) != len(HEAD_ARCHS):
                raise HashEEError(
                    f"exit heads: the checkpoint's {alpha_key} {tuple(alpha.shape)} is not a search over "
                    f"{', '.join(HEAD_ARCHS)}"
                )
            choice = alpha.argmax(dim=-1)
            source = "the search's (argmax alpha)"
            # The search's other candidates and its architecture weights are dropped with it.
            del state_dict[alpha_key]
            for layer, index in enumerate(choice.tolist()):
                for arch in HEAD_ARCHS:
                    if arch != HEAD_ARCHS[index]:
                        stem = f"{prefix}decoder.exit_heads.candidates.{layer}.{arch}."
                        for k in [k for k in state_dict if k.startswith(stem)]:
                            del state_dict[k]
        elif bool((heads.choice != UNCHOSEN).all()):
            choice = heads.choice.clone()  # chosen already (e.g. a reload), the checkpoint says nothing
            source = "the model's"
        else:
            raise HashEEError(
                "--exit-heads searched: the checkpoint has neither chosen exit heads (decoder.exit_heads.choice) "
                "nor a search's architecture weights (decoder.exit_heads.alpha); search first "
                "(--exit-heads search --criterion leco_head_search) and restore its checkpoint"
            )
        heads.select(choice.tolist())
        state_dict[key] = heads.choice.clone()
        chosen = ", ".join(f"{layer} {arch}" for layer, arch in enumerate(heads.chosen_archs(), start=1))
        logger.info(f"exit heads: {source} choice, layer {chosen}")

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        try:
            result = super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
        except RuntimeError:
            ours = self.state_dict()
            raise HashEEError(
                f"checkpoint ({describe_shape(state_dict)}) does not fit {type(self).__name__} "
                f"({describe_shape(ours)}): " + describe_mismatch(ours, state_dict)
            ) from None
        for stack in (self.encoder, self.decoder):
            stack.check_exit_table(stack.exit_table, "checkpoint")
        return result


def _hashee_defaults(args):
    args.exit_impl = getattr(args, "exit_impl", "skip")
    args.decoder_exit_rule = getattr(args, "decoder_exit_rule", "none")
    args.exit_confidence = getattr(args, "exit_confidence", "softmax")
    args.exit_heads = getattr(args, "exit_heads", "shared")
    args.consistentee_policy_dim = getattr(args, "consistentee_policy_dim", DEFAULT_POLICY_DIM)
    args.shallow_exit_layer = getattr(args, "shallow_exit_layer", None)
    args.keep_encoder_layers = getattr(args, "keep_encoder_layers", "first")
    args.keep_decoder_layers = getattr(args, "keep_decoder_layers", "first")
    args.scale_embedding = getattr(args, "scale_embedding", False)
    args.weight_init = getattr(args, "weight_init", "bart")
    if args.scale_embedding:
        if getattr(args, "no_scale_embedding", False):
            raise HashEEError("--scale-embedding and --no-scale-embedding contradict each other")
        # Before fairseq's BART defaults, which would set "no scaling".
        args.no_scale_embedding = False


@register_model_architecture("hashee_bart", "hashee_bart_large")
def hashee_bart_large_architecture(args):
    _hashee_defaults(args)
    bart_large_architecture(args)


@register_model_architecture("hashee_bart", "hashee_bart_base")
def hashee_bart_base_architecture(args):
    _hashee_defaults(args)
    bart_base_architecture(args)
