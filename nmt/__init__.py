"""nmt: attention-based GRU sequence-to-sequence machine translation on PyTorch."""
from __future__ import annotations

__version__ = "0.2.0"
__all__ = ["Translator", "load_recipe", "Recipe", "NmtError", "__version__"]

from nmt.errors import NmtError


def __getattr__(name: str):
    # Lazy: `import nmt` stays cheap (the CLI's start-up time matters) until torch is needed.
    if name == "Translator":
        from nmt.inference.translator import Translator
        return Translator
    if name in ("load_recipe", "Recipe"):
        from nmt import config
        return getattr(config, name)
    raise AttributeError(f"module 'nmt' has no attribute {name!r}")
