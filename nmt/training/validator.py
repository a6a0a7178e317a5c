"""Validation: loss and perplexity over the valid split, BLEU and chrF of its decoded sentences
(decoded as ``nmt translate`` decodes them), and which validation is the best so far."""
from __future__ import annotations

from typing import Any

import torch

from nmt.config import Recipe
from nmt.model.seq2seq import Seq2Seq, perplexity
from nmt.training.state import TrainerState


def is_improvement(metric_name: str, metric: float, loss: float, best_metric: float | None,
                   best_loss: float | None) -> bool:
    """Is a validation better than the best so far (see ``TrainConfig.early_stopping_metric``)?

    ``bleu``: a higher BLEU, or the same BLEU with a lower loss; ``loss``: a lower loss. The first
    validation is always the best so far.
    """
    if best_metric is None:
        return True
    if metric_name == "loss":
        return metric < best_metric
    if metric != best_metric:
        return metric > best_metric
    return best_loss is None or loss < best_loss


def record_validation(state: TrainerState, result: dict[str, Any], metric_name: str) -> tuple[float, bool]:
    """Add ``result`` to the state's history and its early-stopping counts; returns its metric
    (``metric_name`` of it) and whether it is the best so far."""
    state.history.append(result)
    metric = result["bleu"] if metric_name == "bleu" else result["loss"]
    better = is_improvement(metric_name, metric, result["loss"], state.best_metric, state.best_loss)
    if better:
        state.best_metric, state.best_loss, state.best_step = metric, result["loss"], state.step
        state.bad_validations = 0
    else:
        state.bad_validations += 1
    return metric, better


class Validator:
    """Valid loss/perplexity over the whole valid split and BLEU/chrF of decoded valid sentences."""

    def __init__(self, recipe: Recipe, model: Seq2Seq, tokenizers, raw_valid, valid_ds, accelerator, run_dir,
                 lexicon=None):
        self.recipe = recipe
        self.lexicon = lexicon  # validation decodes as translation will: with the recipe's shortlist
        self.model = model
        self.tokenizers = tokenizers
        self.accelerator = accelerator
        self.run_dir = run_dir
        limit = recipe.train.valid_max_sentences or len(valid_ds)
        self.valid_ds = valid_ds
        self.sources = list(raw_valid["src"][:limit])
        self.references = list(raw_valid["tgt"][:limit])

    def run(self, step: int) -> dict[str, Any]:
        """Validate the weights of update ``step``; the record metrics.jsonl keeps of it."""
        from nmt.metrics import score_corpus

        was_training = self.model.training
        self.model.eval()
        loss = self._loss()
        beam = self.recipe.train.valid_beam
        hypotheses = self._decode(beam)
        scores = score_corpus(hypotheses, [self.references], metrics=("bleu", "chrf"),
                              bleu_tokenize=self.recipe.eval.bleu_tokenize)
        if self.accelerator.is_main_process:
            self._plots(step)
        if was_training:
            self.model.train()
        return {"step": step, "loss": loss, "ppl": perplexity(loss), "bleu": scores["bleu"]["score"],
                "chrf": scores["chrf"]["score"], "beam": beam, "sentences": len(hypotheses),
                "samples": [{"src": s, "hyp": h, "ref": r} for s, h, r in
                            zip(self.sources[:3], hypotheses[:3], self.references[:3])]}

    def _loss(self) -> float:
        """Mean negative log-likelihood per target token of the valid split (all processes)."""
        from nmt.data.batching import collate, inference_batches

        acc = self.accelerator
        rank, world = acc.process_index, acc.num_processes
        nll, tokens = 0.0, 0
        batches = inference_batches(self.valid_ds["tgt_len"], 8000, 512)
        with torch.inference_mode(), acc.autocast():
            for indices in batches[rank::world]:
                rows = self.valid_ds[indices]
                batch = collate([{"src_ids": s, "tgt_ids": t} for s, t in
                                 zip(rows["src_ids"], rows["tgt_ids"])]).to(acc.device)
                _, nll_sum = self.model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in,
                                        batch.tgt_out, batch.tgt_mask, 0.0)
                nll += float(nll_sum)
                tokens += batch.n_tgt_tokens
        totals = acc.reduce(torch.tensor([nll, float(tokens)], dtype=torch.float64, device=acc.device), "sum")
        return float(totals[0] / totals[1])

    def _decode(self, beam: int) -> list[str]:
        """The valid sources translated as ``nmt translate`` translates them: the same batches, dealt
        round-robin to the processes; every process gets the whole output, in input order."""
        acc = self.accelerator
        rank, world = acc.process_index, acc.num_processes
        translator = self._translator()
        with acc.autocast():
            # validation searches even when the recipe decodes by sampling: BLEU of a fixed output
            texts = translator.translate(self.sources, beam=beam, shard=(rank, world), sample=False)
        pairs = [(i, text) for i, text in enumerate(texts) if text is not None]
        if world > 1:
            from accelerate.utils import gather_object
            pairs = gather_object(pairs)
        return [text for _, text in sorted(pairs)]

    def _plots(self, step: int) -> None:
        """Attention heatmaps of a few fixed valid sentences, so alignments can be watched forming."""
        count = self.recipe.train.plot_sentences
        if not count:
            return
        from nmt.atomic import safe_dir
        from nmt.figures import plot_attention

        translator = self._translator()
        results = translator.translate(self.sources[:count], beam=1, return_attention=True, sample=False)
        out_dir = safe_dir(self.run_dir / "plots" / f"step{step:07d}")
        kind = self.recipe.model.attention.kind
        for i, result in enumerate(results):
            hyp = result.hypotheses[0]
            if hyp.attention is None:  # an empty source: nothing was decoded
                continue
            plot_attention(hyp.attention.float().cpu().numpy(), hyp.src_tokens, hyp.tokens,
                           out_dir / f"valid{i}.png", title=f"{kind} attention, step {step}",
                           positions=None if hyp.positions is None else hyp.positions.float().cpu().numpy())

    def _translator(self):
        """The model being trained as a :class:`~nmt.inference.translator.Translator` (eval mode;
        :meth:`run` puts it back into training mode)."""
        from nmt.inference.translator import Translator

        translator = Translator(self.recipe, self.tokenizers, self.model, device=self.accelerator.device,
                                lexicon=self.lexicon)
        translator.warn.prefix = "validation"
        return translator
