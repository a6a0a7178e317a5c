"""glibc's heap in a long-running process (nmt.heap): free pages among blocks still in use go back
to the kernel, and training hands them back every heap.TRIM_EVERY updates."""
import subprocess
import sys
import textwrap

import pytest

import nmt.training.trainer as trainer_module
from nmt import heap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")

# Blocks of many sizes below the 32 MiB threshold, each followed by a small block that stays (as a
# cached oneDNN kernel does), then all large ones freed: their pages stay in the process until trimmed.
FRAGMENT = textwrap.dedent("""
    import ctypes, os, sys
    for name in [n for n in os.environ if n.startswith("MALLOC_")]:
        del os.environ[name]
    from nmt.heap import keep_freed_memory_for_reuse, return_free_memory
    assert keep_freed_memory_for_reuse()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def anonymous_mib():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon"):
                return int(line.split()[1]) // 1024

    large, kept = [], []
    for k in range(60):
        size = (4 + k % 7) * 2**20
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)  # touched, so resident
        large.append(block)
        kept.append(libc.malloc(4096))
    for block in large:
        libc.free(block)
    before = anonymous_mib()
    if sys.argv[1] == "trim":
        return_free_memory()
    print(before, anonymous_mib())
""")


@pytest.mark.parametrize("trim", [False, True])
def test_free_pages_among_blocks_in_use_go_back_to_the_kernel(trim):
    out = subprocess.run([sys.executable, "-c", FRAGMENT, "trim" if trim else "keep"], check=True,
                         capture_output=True, text=True).stdout
    before, after = map(int, out.split())
    assert before > 300, "the freed blocks' pages stay resident while blocks above them are in use"
    if trim:
        assert after < before - 250
    else:
        assert after > before - 50


def test_training_returns_free_memory_every_trim_every_updates(tmp_path, tiny_recipe, monkeypatch):
    """Every heap.TRIM_EVERY updates, whatever train.log_every is (nmt bench logs every step)."""
    calls = []
    monkeypatch.setattr(heap, "return_free_memory", lambda: calls.append(1))
    monkeypatch.setattr(heap, "TRIM_EVERY", 3)
    trainer_module.train(tiny_recipe("train.max_steps=7", "train.log_every=1", "train.valid_every=100"),
                         run_dir=tmp_path / "run")
    assert len(calls) == 2  # after updates 3 and 6
