import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("NMT_NO_PROGRESS", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# precision: auto caches its choices here, not in the user's cache (subprocesses inherit it)
os.environ["NMT_CACHE_DIR"] = tempfile.mkdtemp(prefix="nmt-test-cache-")
atexit.register(shutil.rmtree, os.environ["NMT_CACHE_DIR"], True)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (and the CPUs are shared).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: ``--set`` overrides that make recipes/tiny.yaml train in seconds
FAST = ["model.embedding_dim=16", "model.encoder.hidden_size=16", "model.decoder.hidden_size=16",
        "train.log_every=2", "train.plot_sentences=0", "train.valid_max_sentences=4",
        "tokenizer.src_vocab_size=80", "tokenizer.tgt_vocab_size=80"]


@pytest.fixture(scope="session")
def fast() -> list[str]:
    """The overrides of :data:`FAST` (a fresh list: callers may extend it)."""
    return list(FAST)


@pytest.fixture(scope="session")
def tiny_recipe():
    """``tiny_recipe(*overrides)``: recipes/tiny.yaml with :data:`FAST` and ``overrides`` applied."""
    from nmt.config import load_recipe

    def make(*overrides: str):
        return load_recipe(REPO / "recipes/tiny.yaml", FAST + list(overrides))
    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_recipe) -> Path:
    """A real run directory: recipes/tiny.yaml trained for 4 steps (tokenizers, recipe, checkpoints,
    metrics). Shared by the session: copy it before changing anything."""
    from nmt.training.loop import train

    run = tmp_path_factory.mktemp("tiny-run") / "run"
    train(tiny_recipe("train.max_steps=4", "train.valid_every=4"), run_dir=run)
    return run


def make_tiny_model(kind: str = "bahdanau", input_feeding: bool = True, *, activation: str = "tanh",
                    attention_activation: str | None = None, layers: int = 1, self_att: int = 0,
                    seed: int = 0, src_vocab: int = 17, tgt_vocab: int = 19, weight_scale: float = 1.0,
                    eos_bias: float = 0.0, out_scale: float = 1.0, **model_fields):
    """A random model in eval mode: embeddings 8, encoder 6 per direction, decoder 12 (= 2 × 6, so
    luong-dot works), local-p window 2; ``model_fields`` go to ``ModelConfig``. Larger weights
    (``weight_scale``) give more varied, context-dependent outputs; ``eos_bias`` is added to EOS's
    output bias (high: short outputs, negative: up to the max length)."""
    import torch

    from nmt.config import AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig
    from nmt.data.vocab import EOS_ID
    from nmt.model.seq2seq import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(
        embedding_dim=8, dropout=0.0, activation=activation,
        encoder=EncoderConfig(hidden_size=6, layers=layers, dropout=0.0, self_attention_layers=self_att,
                              self_attention_heads=2, self_attention_ff_size=16),
        decoder=DecoderConfig(hidden_size=12, layers=layers, dropout=0.0, input_feeding=input_feeding),
        attention=AttentionConfig(kind=kind, window=2, score="general", activation=attention_activation),
        **model_fields)
    model = build_model(cfg, src_vocab, tgt_vocab).eval()
    if weight_scale != 1.0 or out_scale != 1.0 or eos_bias:
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1:
                    param.mul_(weight_scale)
            model.output.weight.mul_(out_scale)
            model.output.bias[EOS_ID] += eos_bias
    return model


def make_random_run(run: Path, model_cfg, src_lines: list[str], tgt_lines: list[str], *,
                    src_vocab: int, tgt_vocab: int, eos_bias: float, seed: int = 0,
                    max_input_len: int = 12) -> Path:
    """A run directory without training: sentencepiece models trained on ``src_lines`` /
    ``tgt_lines``, the recipe (``model_cfg``, beam 3, at most 1.0 x source + 4 target pieces) and a
    random model saved as the best checkpoint. Weights are doubled so that outputs vary with the
    input; ``eos_bias`` is added to EOS's output bias so that some outputs end early."""
    import datasets
    import torch

    from nmt.config import Recipe, TokenizerConfig
    from nmt.data.tokenizer import SubwordTokenizers
    from nmt.data.vocab import EOS_ID
    from nmt.inference.checkpoint import save_weights
    from nmt.model.seq2seq import build_model

    run.mkdir(parents=True, exist_ok=True)
    tok_cfg = TokenizerConfig(src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab, num_threads=1)
    tokenizers = SubwordTokenizers.train(
        tok_cfg, datasets.Dataset.from_dict({"src": src_lines, "tgt": tgt_lines}), run)
    recipe = Recipe()
    recipe.data.path = "corpus"
    recipe.tokenizer = tok_cfg
    recipe.model = model_cfg
    recipe.decode.beam = 3
    recipe.decode.max_len_a = 1.0
    recipe.decode.max_len_b = 4
    recipe.decode.max_input_len = max_input_len
    (run / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    torch.manual_seed(seed)
    model = build_model(recipe.model, tokenizers.src_vocab_size, tokenizers.tgt_vocab_size)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(2.0)
        model.output.bias[EOS_ID] += eos_bias
    save_weights(model, run / "checkpoints" / "best.safetensors")
    return run


@pytest.fixture(scope="session")
def random_run():
    """The factory :func:`make_random_run`."""
    return make_random_run


@pytest.fixture(scope="session")
def tiny_model():
    """The factory :func:`make_tiny_model`."""
    return make_tiny_model


@pytest.fixture(params=["auto", "reference"])
def kernels(request) -> str:
    """Both values of ``model.kernels``: the CPU fast paths where they apply, and the plain
    equations only (what a GPU runs). Tests that take this fixture run under both."""
    return request.param


@pytest.fixture
def loaded_translators(monkeypatch) -> list:
    """Every Translator that Translator.load returns during the test, in order (the tools load
    their own; a test looks at what they loaded)."""
    from nmt.inference.translator import Translator

    loaded, load = [], Translator.load

    def spy(*args, **kwargs):
        loaded.append(load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(Translator, "load", spy)
    return loaded


def train_served_run(run_dir: Path) -> Path:
    """recipes/tiny.yaml trained for 60 steps on one thread: the model the server and page tests serve."""
    from nmt.config import load_recipe
    from nmt.training.loop import train

    recipe = load_recipe(REPO / "recipes/tiny.yaml",
                         ["train.max_steps=60", "train.valid_every=60", "train.plot_sentences=0",
                          "train.valid_max_sentences=4", "train.num_threads=1", "train.log_every=60"])
    train(recipe, run_dir=run_dir)
    return run_dir


def load_script(name: str):
    """``scripts/NAME.py`` imported as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (the system's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(runs, log: Path, *options: str, code: str | None = None, pythonpath: tuple = ()):
    """``nmt serve RUNS --port FREE OPTIONS`` in a subprocess on 127.0.0.1, output to ``log``;
    yields ``(base URL, process)`` once /health answers, and stops the server afterwards.
    ``code``: Python run with ``-c`` instead of ``-m nmt`` (it gets ``serve ...`` as its arguments
    and runs the command line itself). ``pythonpath``: directories put first on the server's
    PYTHONPATH (its model worker processes inherit it)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [*map(str, pythonpath), str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    with open(log, "wb") as out:
        start = ["-c", code] if code is not None else ["-m", "nmt"]
        proc = subprocess.Popen([sys.executable, *start, "serve", *map(str, runs), "--port", str(port),
                                 *options], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"nmt serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"nmt serve did not start:\n{log.read_text()}"
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
