"""Dynamic exit rules and the exit heads they read (docs/design.md section 7).

HashEE decides a token's exit layer before the stack runs, from its id (the
exit table). The methods it is compared with decide a decoder position's exit
while computing it: at the end of layer ``i``, a rule looks at the positions
still active and marks some of them exited there. From then on they are
exited positions in every respect, so the layer plans (the planner orders
the positions anew for the layers above, ``StackPlanner.replan``) and the
decoder's cache (modules/) serve both kinds unchanged: a rule decides, the
layers execute.

- ``heads.py``: next-token distributions at every decoder layer (the model's
  shared output projection, or a head per layer);
- ``rules.py``: what a rule is, and CALM's confidence rule (softmax
  response, state saturation, meta classifier);
- ``dat.py``: DAT's halting rules and their oracle exits;
- ``leco.py``: LECO's exiting side, a rule comparing successive exits (a
  documented stand-in for COBEE, whose definition we could not read); LECO's
  searched heads are in ``heads.py``.
- ``consistentee.py``: ConsistentEE's exit policies and their REINFORCE loss.
- ``free.py``: FREE's shallow-deep rule, whose exited positions are stacked
  and computed deeply later (synchronized parallel decoding), and its
  adaptive threshold (``beta_mixture.py``).

A model carries its rule and heads as parameters of its decoder
(``decoder.exit_heads.*``, ``decoder.exit_rule.*``) chosen by model options
(``--decoder-exit-rule``, ``--exit-confidence``, ``--exit-heads``), so a
checkpoint restores them; thresholds are task options, settable when
generating without retraining (``--exit-threshold``).
"""

from typing import Optional

from ..errors import HashEEError
from .consistentee import DEFAULT_POLICY_DIM, ConsistentEERule
from .dat import HaltingRule, MultinomialRule
from .free import ShallowDeepRule, default_shallow_layer
from .leco import AgreementRule
from .rules import ConfidenceRule, ExitRule

RULES = ("none", "confidence", "dat-halting", "dat-multinomial", "consistentee", "agreement", "free")


def build_exit_rule(args, embed_dim: int, num_layers: int) -> Optional[ExitRule]:
    """The decoder's rule from the model options (``--decoder-exit-rule``), or None."""
    name = getattr(args, "decoder_exit_rule", "none")
    if name == "none":
        return None
    if name == "confidence":
        return ConfidenceRule(getattr(args, "exit_confidence", "softmax"), embed_dim)
    if name == "dat-halting":
        return HaltingRule(embed_dim, num_layers)
    if name == "dat-multinomial":
        return MultinomialRule(embed_dim, num_layers)
    if name == "agreement":
        return AgreementRule(num_layers)
    if name == "free":
        shallow = getattr(args, "shallow_exit_layer", None)
        return ShallowDeepRule(num_layers, default_shallow_layer(num_layers) if shallow is None else shallow)
    if name == "consistentee":
        return ConsistentEERule(embed_dim, num_layers, getattr(args, "consistentee_policy_dim", DEFAULT_POLICY_DIM))
    raise HashEEError(f"--decoder-exit-rule: expected one of {', '.join(RULES)}, got {name!r}")
