"""Several batches searched at once on a CPU's threads (``decode.inter_threads``): the pattern of
CTranslate2's ``inter_threads`` and Marian's CPU workers, inside one process.

A search step is a chain of small products and elementwise operations. An engine's intra-op
threads split each of them and meet again after it, many times per step, and most of the step's
smaller operations (and all of its Python) run on one thread meanwhile. Here each of N threads
searches parts of the batches on T / N intra-op threads (T: the engine's threads), sharing the
model, its search tables and the lexicon, which search only reads. Torch's operations and
onnxruntime's runs release the GIL, so one thread's Python runs while another's products do.
Both engines use it (:class:`~nmt.inference.translator.Translator`, whose torch threads are set
per part thread, and :class:`~nmt.inference.onnx_translator.OnnxTranslator`, whose part sessions
run on T / N threads each).

Each batch is split into N interleaved parts (sentences k, k + N, ...): the parts of a
length-sorted batch have the same lengths, so threads finish their parts together, and together
they hold as many rows as the batch did, so memory stays what ``decode.batch_tokens`` sets.
With the torch engine's fast paths (``model.kernels: auto``) search gives a sentence the same
translation in any batch and on any number of threads (:mod:`nmt.kernels.batch_invariant`), so
the parts change no translation; the plain equations round a score with its batch, as they do for
any batch size (tests/test_inter_threads.py). Speed: docs/performance.md.
"""
from __future__ import annotations

from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

__all__ = ["resolve_inter_threads", "split_batches", "run_parts", "search_in_parts"]

T = TypeVar("T")
R = TypeVar("R")


def resolve_inter_threads(setting: int | str, threads: int, on_cpu: bool = True) -> int:
    """``decode.inter_threads``: a number is kept; ``auto`` is one search per intra-op thread of
    the engine (``threads``) on a CPU, each on one thread, and one search at a time elsewhere (a
    GPU runs one batch's products in parallel already)."""
    if setting != "auto":
        return int(setting)
    return max(1, threads) if on_cpu else 1


def split_batches(batches: Sequence[Sequence[T]], parts: int) -> list[list[T]]:
    """Each batch as ``min(parts, len(batch))`` interleaved parts, the parts of a batch one after
    the other: batch ``[a, b, c, d, e]`` in 2 parts is ``[a, c, e], [b, d]``."""
    return [list(batch[k::parts]) for batch in batches for k in range(min(parts, len(batch)))]


def run_parts(fn: Callable[[T], R], parts: Sequence[T], threads: int,
              intra_threads: tuple[Callable[[], int], Callable[[int], None]] | None = None) -> list[R]:
    """``[fn(p) for p in parts]``, on ``threads`` threads at once when there are that many parts.
    Parts are taken in order as threads come free. The first part that raises stops the parts not
    yet started; its exception is raised here once the running ones have ended.

    ``intra_threads``: the library's intra-op thread count as ``(get, set)`` functions (torch's:
    per calling thread, but a new thread starts with the count set last): each part thread runs on
    ``get() // threads`` (at least 1), and the caller's count is set again afterwards. An engine
    whose sessions carry their own count (onnxruntime) passes None.

    ``fn`` runs in another thread: thread-local settings (``torch.inference_mode``,
    ``torch.autocast``) must be entered by ``fn`` itself."""
    if threads <= 1 or len(parts) < 2:
        return [fn(p) for p in parts]
    run = fn
    if intra_threads is not None:
        get, set_threads = intra_threads
        total = get()
        intra = max(1, total // threads)

        def run(part: T) -> R:
            set_threads(intra)
            return fn(part)

    pool = ThreadPoolExecutor(min(threads, len(parts)), thread_name_prefix="nmt-search")
    try:
        futures = [pool.submit(run, p) for p in parts]
        wait(futures, return_when=FIRST_EXCEPTION)  # a failure ends the wait while others still run
        for f in futures:
            if f.done() and f.exception() is not None:
                raise f.exception()
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if intra_threads is not None:
            set_threads(total)


def search_in_parts(batches: Sequence[Sequence[T]], threads: int, search_part: Callable[[list[T]], list[R]],
                    intra_threads: tuple[Callable[[], int], Callable[[int], None]] | None = None
                    ) -> dict[int, R]:
    """Every batch split into ``threads`` parts (:func:`split_batches`; one thread: the batches as
    they are), each searched by ``search_part`` (:func:`run_parts`): its results, one per item,
    gathered by the items' ``index``."""
    parts = split_batches(batches, threads)
    out: dict[int, R] = {}
    for group, found in zip(parts, run_parts(search_part, parts, threads, intra_threads)):
        for item, result in zip(group, found):
            out[item.index] = result
    return out
