from .calm_exit_classifier import CalmExitClassifierCriterion  # noqa: F401
from .consistentee_policy import ConsistentEEPolicyCriterion  # noqa: F401
from .dat_exit_classifier import DatExitClassifierCriterion  # noqa: F401
from .dat_joint import DatJointCriterion  # noqa: F401
from .distill import DistillCriterion  # noqa: F401
from .free_shallow_deep import FreeShallowDeepCriterion  # noqa: F401
from .leco_head_search import LecoHeadSearchCriterion  # noqa: F401
from .multi_exit import MultiExitLabelSmoothedCrossEntropyCriterion  # noqa: F401
