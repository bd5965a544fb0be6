from .hashee_bart import HashEEBARTModel  # noqa: F401
from .hashee_cpt import HashEECPTModel  # noqa: F401
from .hashee_transformer import HashEEDecoder, HashEEEncoder  # noqa: F401
