"""oneDNN matrix products of a run logged with ONEDNN_VERBOSE=1: distinct shapes by where they come
from, and how many kernels a primitive cache of CAPACITY entries (least recently used out) compiles
per update.

    ONEDNN_VERBOSE=1 python -m nmt train recipes/fr-en.yaml --set train.max_steps=150 ... > run.log
    python scripts/onednn_shapes.py run.log [--capacity 1024] [--from-update 101]

An update is counted from its first output-layer product (a right operand ``Dx8000``, the target
vocabulary; ``--vocab``) after any other product. The classes assume batches of at most 160
sentences and the fr-en model's sizes (docs/performance.md, "bf16 autocast").
"""
from __future__ import annotations

import argparse
import collections


def exec_lines(path: str):
    """(primitive key: kind, implementation, memory descriptors, attributes and shape; shape)."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.startswith("onednn_verbose") and ",exec," in line:
                fields = line.rstrip().split(",")
                yield ",".join(fields[5:-1]), fields[-2]


def origin(shape: str, vocab: int) -> str:
    """Where a product of ``shape`` (``MxK:KxN`` or ``BxMxK:BxKxN``) comes from."""
    left, right = [[int(d) for d in part.split("x")] for part in shape.split(":")]
    if len(left) == 3:
        return "attention bmm"
    rows, inner, cols = left[0], left[1], right[1]
    if rows == 1:
        return "v gradient (K = T*B*S)" if inner > 1024 else "per-step score (N = B*S)"
    if vocab in (rows, inner, cols):
        return "output layer / loss"
    if rows <= 160:
        return "per-step, B rows"
    if inner > 1024 or inner % 256:  # K is no layer width (all multiples of 256 in fr-en)
        return "weight gradient (K = B*T)"
    return "sequence-wide (B*T rows)"


def multiply_adds(shape: str) -> int:
    left, right = [[int(d) for d in part.split("x")] for part in shape.split(":")]
    return (left[0] if len(left) == 3 else 1) * left[-2] * left[-1] * right[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("--capacity", type=int, default=1024)
    parser.add_argument("--from-update", type=int, default=101)
    parser.add_argument("--vocab", type=int, default=8000)
    args = parser.parse_args()
    cache: collections.OrderedDict[str, None] = collections.OrderedDict()
    misses: collections.Counter[int] = collections.Counter()
    by_origin: dict[str, set[str]] = collections.defaultdict(set)
    update, previous_output, products, flops = 0, False, 0, 0
    for key, shape in exec_lines(args.log):
        output = shape.endswith(f"x{args.vocab}")
        update += output and not previous_output
        previous_output = output
        products += 1
        flops += multiply_adds(shape)
        by_origin[origin(shape, args.vocab)].add(key)
        if key in cache:
            cache.move_to_end(key)
            continue
        misses[update] += 1
        cache[key] = None
        if len(cache) > args.capacity:
            cache.popitem(last=False)
    for name, keys in sorted(by_origin.items()):
        print(f"{len(keys):6d}  {name}")
    print(f"{sum(len(keys) for keys in by_origin.values()):6d}  distinct, of {products} products "
          f"({2 * flops / 1e12:.3f} TFLOP)")
    span = range(args.from_update, update)  # the last segment also holds the final validation
    if span:
        print(f"compilations per update {span.start}-{span.stop - 1} with {args.capacity} entries: "
              f"{sum(misses[u] for u in span) / len(span):.2f}")


if __name__ == "__main__":
    main()
