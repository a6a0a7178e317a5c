"""How ``nmt serve`` builds a served run's translator: one factory, used by the HTTP process and by
every model worker process (:mod:`nmt.tools.serve_worker`), so they load the same model the same
way. Its options are plain data (they cross a process boundary)."""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["build_translator", "model_options"]


def model_options(run_dir, checkpoint: str = "best", precision: str = "float32") -> dict[str, Any]:
    """The options :func:`build_translator` reads, as a plain dict (picklable, JSON-able)."""
    return {"run_dir": str(run_dir), "checkpoint": checkpoint, "precision": precision}


def build_translator(options: Mapping[str, Any]):
    """The translator of one served run on the CPU (``options``: see :func:`model_options`)."""
    from nmt.inference.translator import Translator

    return Translator.load(options["run_dir"], options.get("checkpoint", "best"), device="cpu",
                           precision=options.get("precision", "float32"))
