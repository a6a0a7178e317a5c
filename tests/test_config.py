"""Recipe parsing: valid recipes, every kind of invalid input, overrides, environment expansion."""
from pathlib import Path

import pytest

from nmt.config import STOP_KEYS, Recipe, check_stops, load_recipe, parse_override, recipe_from_dict
from nmt.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(raw)
    return info.value.problems


def test_shipped_recipes_validate_and_stop(repo, monkeypatch):
    monkeypatch.delenv("NMT_TATOEBA_DIR", raising=False)
    paths = sorted((repo / "recipes").glob("*.yaml"))
    assert len(paths) >= 7
    for path in paths:
        recipe = load_recipe(path)
        assert isinstance(recipe, Recipe)
        assert recipe.output.name == path.stem
        assert any(getattr(recipe.train, key) is not None for key in STOP_KEYS), path.name
        check_stops(recipe, str(path))
        # every corpus a shipped recipe reads by default lies inside the repository
        assert Path(recipe.data.path).resolve().is_relative_to(repo.resolve()), (path.name, recipe.data.path)
        assert Path(recipe.data.path).is_dir(), (path.name, recipe.data.path)


def test_fr_en_variants_are_fr_en_plus_their_keys(repo):
    base = load_recipe(repo / "recipes/fr-en.yaml").to_dict()
    expected = {
        "fr-en-luong": {("model", "attention", "kind"): "luong-general"},
        "fr-en-local-p": {("model", "attention", "kind"): "local-p", ("model", "attention", "window"): 5},
        "fr-en-selfatt": {("model", "activation"): "gelu",
                          ("model", "encoder", "self_attention_layers"): 2},
    }
    for name, keys in expected.items():
        variant = load_recipe(repo / f"recipes/{name}.yaml").to_dict()
        for section in ("data", "tokenizer", "decode", "eval"):
            assert variant[section] == base[section], (name, section)
        for key in ("budget_minutes", "precision", "batch_tokens", "lr", "schedule"):
            assert variant["train"][key] == base["train"][key], (name, key)
        for path, value in keys.items():
            node = variant
            for part in path:
                node = node[part]
            assert node == value, (name, path)


def test_base_chain_and_override_precedence(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "grand.yaml").write_text(
        "data: {path: corpus, src_lang: de}\n"
        "model: {embedding_dim: 64, encoder: {hidden_size: 32, layers: 2}}\n"
        "train: {lr: 0.5, max_steps: 10, betas: [0.8, 0.9]}\n", encoding="utf-8")
    (tmp_path / "sub" / "parent.yaml").write_text(
        "base: ../grand.yaml\nmodel: {encoder: {hidden_size: 48}}\ntrain: {lr: 0.25}\n", encoding="utf-8")
    (tmp_path / "sub" / "child.yaml").write_text(
        "base: parent.yaml\nmodel: {encoder: {layers: 3}}\n"
        "train: {betas: [0.7, 0.95], max_steps: null, budget_minutes: 2}\n", encoding="utf-8")
    recipe = load_recipe(tmp_path / "sub" / "child.yaml")
    assert recipe.output.name == "child"
    assert recipe.model.embedding_dim == 64          # from the grandparent
    assert recipe.model.encoder.hidden_size == 48    # the parent overrides the grandparent
    assert recipe.model.encoder.layers == 3          # the child overrides both
    assert recipe.train.lr == 0.25
    assert recipe.train.betas == [0.7, 0.95]         # lists are replaced, not merged
    assert recipe.train.max_steps is None and recipe.train.budget_minutes == 2  # null clears a base key
    assert recipe.data.src_lang == "de"
    # a relative data.path is relative to the file that sets it (the grandparent), not to the child
    assert recipe.data.path == str((tmp_path / "corpus").resolve())
    # --set wins over every file of the chain
    recipe = load_recipe(tmp_path / "sub" / "child.yaml", ["model.encoder.layers=5", "train.lr=0.125"])
    assert recipe.model.encoder.layers == 5 and recipe.train.lr == 0.125


def test_base_cycle_prints_the_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\ndata: {path: /x}\n", encoding="utf-8")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n", encoding="utf-8")
    (tmp_path / "c.yaml").write_text("base: a.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_recipe(tmp_path / "a.yaml")
    text = str(info.value)
    assert "cycle" in text
    assert f"{tmp_path / 'a.yaml'} -> {tmp_path / 'b.yaml'} -> {tmp_path / 'c.yaml'} -> {tmp_path / 'a.yaml'}" in text
    (tmp_path / "self.yaml").write_text("base: self.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(tmp_path / "self.yaml")


def test_missing_or_bad_base_names_the_file(tmp_path):
    path = write(tmp_path, "base: nowhere.yaml\ndata: {path: /x}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    text = str(info.value)
    assert str(tmp_path / "nowhere.yaml") in text and "not found" in text and str(path) in text
    path = write(tmp_path, "base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="base: got"):
        load_recipe(path)
    (tmp_path / "broken.yaml").write_text("data: [unclosed\n", encoding="utf-8")
    path = write(tmp_path, "base: broken.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert "broken.yaml" in str(info.value) and "line" in str(info.value)


def test_a_recipe_without_a_stop_criterion_is_rejected(tmp_path):
    recipe = recipe_from_dict({"data": {"path": "/x"}})
    with pytest.raises(ConfigError) as info:
        check_stops(recipe, "r.yaml")
    text = str(info.value)
    assert "r.yaml" in text
    for key in STOP_KEYS:
        assert f"train.{key}" in text
    for key, value in (("max_steps", 5), ("max_epochs", 1), ("budget_minutes", 0.5), ("patience", 3)):
        check_stops(recipe_from_dict({"data": {"path": "/x"}, "train": {key: value}}))


def test_defaults_and_nesting():
    recipe = recipe_from_dict({"data": {"path": "/tmp/x"}, "model": {"attention": {"kind": "luong-general"}}})
    assert recipe.model.attention.kind == "luong-general"
    assert recipe.model.encoder.bidirectional is True  # untouched default
    assert recipe.train.lr == 1e-3


def test_unknown_key_gets_path_and_suggestion():
    problems = problems_of({"data": {"path": "x"}, "model": {"atention": {"kind": "bahdanau"}}})
    assert problems == ["model.atention: unknown key; did you mean 'model.attention'?"]
    problems = problems_of({"data": {"path": "x"}, "model": {"encoder": {"hiden_size": 3}}})
    assert "model.encoder.hiden_size" in problems[0] and "model.encoder.hidden_size" in problems[0]


def test_unknown_section_lists_known():
    problems = problems_of({"trian": {}, "data": {"path": "x"}})
    assert problems[0].startswith("trian: unknown key; did you mean 'train'")


def test_wrong_types_name_value_and_expected():
    problems = problems_of({"data": {"path": "x"}, "train": {"lr": "fast", "max_steps": 1.5,
                                                            "betas": [0.9]},
                            "model": {"encoder": {"bidirectional": "yes"}}})
    text = "\n".join(problems)
    assert "train.lr: got 'fast', expected a number" in text
    assert "train.max_steps: got 1.5" in text and "integer" in text
    assert "model.encoder.bidirectional: got 'yes', expected true or false" in text


def test_literal_choices_suggest():
    problems = problems_of({"data": {"path": "x"}, "model": {"attention": {"kind": "bahdanu"}}})
    assert "model.attention.kind: got 'bahdanu'" in problems[0]
    assert "did you mean 'bahdanau'" in problems[0]


def test_out_of_range_and_combinations():
    text = "\n".join(problems_of({
        "data": {"path": "x"},
        "train": {"lr": -1.0, "label_smoothing": 1.5},
        "decode": {"beam": 2, "n_best": 4},
        "model": {"attention": {"kind": "local-p"}},
    }))
    assert "train.lr: got -1.0, must be > 0" in text
    assert "train.label_smoothing: got 1.5, must be in [0, 1)" in text
    assert "decode.n_best: got 4, must be <= decode.beam (2)" in text
    assert "model.attention.window: local-p attention needs a window" in text


def test_unknown_activation_is_rejected_when_the_recipe_is_read():
    problems = problems_of({"data": {"path": "x"}, "model": {"activation": "gelo"}})
    assert problems[0].startswith("model.activation: unknown activation 'gelo'; did you mean 'gelu'?")
    assert "available: identity" in problems[0]
    problems = problems_of({"data": {"path": "x"}, "model": {"attention": {"activation": "rleu"}}})
    assert problems[0].startswith("model.attention.activation: unknown activation 'rleu'; did you mean 'relu'?")


def test_activation_choices_are_the_registry_names():
    from nmt.config import ACTIVATIONS
    from nmt.model.activations import available_activations

    assert ACTIVATIONS == tuple(available_activations())


def test_bleu_tokenizer_choices_are_sacrebleus():
    from sacrebleu.metrics import BLEU

    from nmt.config import BLEU_TOKENIZERS

    assert BLEU_TOKENIZERS == tuple(BLEU.TOKENIZERS)
    problems = problems_of({"data": {"path": "x"}, "eval": {"bleu_tokenize": "13b"}})
    assert problems[0].startswith("eval.bleu_tokenize: unknown BLEU tokenizer '13b'; did you mean '13a'?")


def test_every_range_is_declared_on_its_field():
    problems = problems_of({"data": {"path": "x"}, "tokenizer": {"src_vocab_size": 4, "character_coverage": 1.5},
                            "model": {"encoder": {"self_attention_layers": -1}, "attention": {"window": 0}},
                            "train": {"betas": [0.9, 1.0], "num_threads": 0}, "eval": {"metrics": ["blue"]}})
    assert problems == [
        "tokenizer.src_vocab_size: got 4, must be >= 8 (4 special pieces + characters)",
        "tokenizer.character_coverage: got 1.5, must be in [0, 1]",
        "model.encoder.self_attention_layers: got -1, must be >= 0",
        "model.attention.window: got 0, must be > 0",
        "train.betas: got [0.9, 1.0], expected 2 numbers in [0, 1)",
        "train.num_threads: got 0, must be > 0",
        "eval.metrics: unknown metric 'blue'; did you mean 'bleu'? available: bleu, chrf, ter",
    ]


def test_unknown_activation_option_is_rejected_before_training():
    from nmt.model.seq2seq import check_model_config

    recipe = recipe_from_dict({"data": {"path": "x"}, "model": {"activation_options": {"bogus": 1}}})
    with pytest.raises(ConfigError, match="unknown option.*bogus"):
        check_model_config(recipe.model)


def test_self_attention_heads_must_divide_width():
    text = "\n".join(problems_of({"data": {"path": "x"}, "model": {"encoder": {
        "hidden_size": 10, "self_attention_layers": 1, "self_attention_heads": 3}}}))
    assert "model.encoder.self_attention_heads: 3 must divide the encoder output width 20" in text


def test_local_formats_need_a_path():
    assert any("data.path" in p for p in problems_of({"data": {"format": "tsv"}}))


def test_overrides_are_typed(tmp_path):
    path = write(tmp_path, "data: {path: /tmp}\n")
    recipe = load_recipe(path, ["train.lr=3e-4", "model.attention.kind=local-p", "model.attention.window=8",
                                "train.betas=[0.8, 0.98]", "eval.metrics=bleu,chrf"])
    assert recipe.train.lr == pytest.approx(3e-4)
    assert recipe.model.attention.window == 8
    assert recipe.train.betas == [0.8, 0.98]
    assert recipe.eval.metrics == ["bleu", "chrf"]
    with pytest.raises(ConfigError) as info:
        load_recipe(path, ["train.lr=abc"])
    assert "train.lr: got 'abc'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_recipe(path, ["train.lr"])
    assert "expected section.key=value" in str(info.value)
    with pytest.raises(ConfigError):
        load_recipe(path, ["train.lr.x=1"])


def test_parse_override_scientific():
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 1e-3)
    assert parse_override("output.name=abc") == (["output", "name"], "abc")


def test_env_expansion_and_relative_paths(tmp_path, monkeypatch):
    path = write(tmp_path, "data: {path: '${NMT_TEST_DIR:-corpus}'}\n")
    monkeypatch.delenv("NMT_TEST_DIR", raising=False)
    assert load_recipe(path).data.path == str((tmp_path / "corpus").resolve())
    monkeypatch.setenv("NMT_TEST_DIR", "/elsewhere")
    assert load_recipe(path).data.path == "/elsewhere"
    path2 = write(tmp_path, "data: {path: '${NMT_UNSET_VAR_X}'}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path2)
    assert "NMT_UNSET_VAR_X" in str(info.value)


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "data:\n  path: [unclosed\ntrain: {}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert "line" in str(info.value) and str(path) in str(info.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_recipe(tmp_path / "nope.yaml")
    assert "not found" in str(info.value)


def test_round_trip_through_yaml(tmp_path):
    recipe = recipe_from_dict({"data": {"path": "/x"}, "model": {"activation": "gelu"}})
    path = write(tmp_path, recipe.to_yaml())
    assert load_recipe(path).to_dict() | {"output": None} == recipe.to_dict() | {"output": None}


def test_yaml_no_is_read_as_the_word_for_choices(tmp_path):
    path = write(tmp_path, "data: {path: /tmp}\ntrain: {precision: no}\n")
    assert load_recipe(path).train.precision == "no"
    assert load_recipe(path, ["train.precision=no"]).train.precision == "no"
    with pytest.raises(ConfigError, match="train.precision"):
        load_recipe(path, ["train.precision=yes"])


def test_model_kernels_choices():
    data = {"path": "x"}
    assert recipe_from_dict({"data": data}).model.kernels == "auto"
    assert recipe_from_dict({"data": data, "model": {"kernels": "reference"}}).model.kernels == "reference"
    problems = problems_of({"data": data, "model": {"kernels": "refrence"}})
    assert "model.kernels: got 'refrence'" in problems[0] and "did you mean 'reference'" in problems[0]


# ------------------------------------------------------------------- hostile recipe files

def test_env_values_are_expanded_after_parsing(tmp_path, monkeypatch):
    """A value may hold '#' and ': '; a comment is never expanded; the unset variable is named
    with its key and recipe; an empty value is a value, and ${X:-d} reads numbers as YAML would."""
    monkeypatch.setenv("NMT_TEST_DIR", "/data/run #2: final")
    monkeypatch.delenv("NMT_TEST_UNSET", raising=False)
    monkeypatch.delenv("NMT_TEST_LR", raising=False)
    path = write(tmp_path, "# ${NMT_TEST_UNSET} is only mentioned here\n"
                           "data: {path: '${NMT_TEST_DIR}'}\ntrain: {lr: '${NMT_TEST_LR:-2e-3}'}\n")
    recipe = load_recipe(path)
    assert recipe.data.path == "/data/run #2: final"
    assert recipe.train.lr == 2e-3
    assert "NMT_TEST" not in recipe.to_yaml(), "the resolved recipe holds plain values"
    monkeypatch.setenv("NMT_TEST_LR", "abc")
    with pytest.raises(ConfigError, match="train.lr: got 'abc'"):
        load_recipe(path)
    unset = write(tmp_path, "data: {path: /x}\noutput: {name: '${NMT_TEST_UNSET}'}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(unset)
    text = str(info.value)
    assert str(unset) in text and "output.name" in text and "NMT_TEST_UNSET is not set" in text
    monkeypatch.setenv("NMT_TEST_UNSET", "")
    assert load_recipe(unset).output.name == "", "set but empty is not 'not set'"


def test_yaml_aliases_are_refused_before_anything_is_built(tmp_path):
    import time

    small = write(tmp_path, "data: {path: /x}\ntrain: {betas: &b [0.9, 0.99]}\ndecode: {n_best: *b}\n")
    with pytest.raises(ConfigError, match="line 3.*alias"):
        load_recipe(small)
    lines = ["a: &a [" + ", ".join(["lol"] * 9) + "]"]
    for i in range(1, 10):  # 9 ** 10 strings if expanded
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1 if i > 1 else ''}"] * 9) + "]")
    path = write(tmp_path, "\n".join(lines).replace("*a0", "*a") + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert time.perf_counter() - start < 5, "the aliases were expanded (9 ** 10 strings would take hours)"
    assert "line 2" in str(info.value) and "alias" in str(info.value) and str(path) in str(info.value)


def test_a_key_given_twice_is_refused_naming_file_line_and_key(tmp_path):
    path = write(tmp_path, "data: {path: /x}\ntrain:\n  lr: 0.1\n  seed: 3\n  lr: 0.2\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    text = str(info.value)
    assert str(path) in text and "line 5" in text and "'lr' given twice" in text and "line 3" in text


@pytest.mark.parametrize("text, expected", [
    ("data: {path: /x, columns: {1: 0, src: 1, tgt: 0}}\n", "data.columns: key 1 is an integer"),
    ("data: {path: /x}\ntrain: " + "[" * 600 + "]" * 600 + "\n", "nested deeper than"),
    ("data: {path: /x}\ntrain: !!python/object/apply:os.system ['true']\n", "python/object"),
])
def test_hostile_recipes_are_config_errors(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_recipe(write(tmp_path, text))


def test_overrides_go_through_the_same_loader(tmp_path):
    path = write(tmp_path, "data: {path: /x}\n")
    with pytest.raises(ConfigError, match="nested deeper"):
        load_recipe(path, ["train.betas=" + "[" * 600 + "]" * 600])


def test_a_recipe_that_is_a_directory_says_so(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        load_recipe(tmp_path)


def test_a_model_too_large_for_memory_is_refused_naming_its_sizes(tmp_path, monkeypatch):
    """Parameters are counted on the meta device (nothing allocated); training needs 16 bytes each."""
    from nmt.model import seq2seq
    from nmt.model.seq2seq import check_model_config

    recipe = recipe_from_dict({"data": {"path": "x"}, "model": {"encoder": {"hidden_size": 10**9}}})
    with pytest.raises(ConfigError) as info:
        check_model_config(recipe.model, "r.yaml", vocab_sizes=(300, 300))
    assert "model.encoder.hidden_size (1,000,000,000)" in str(info.value)
    small = recipe_from_dict({"data": {"path": "x"}, "model": {"embedding_dim": 8, "encoder": {"hidden_size": 8},
                                                               "decoder": {"hidden_size": 8}}})
    n = check_model_config(small.model, vocab_sizes=(100, 100))
    assert n > 0
    monkeypatch.setattr(seq2seq, "available_memory", lambda: 16 * n - 1)
    monkeypatch.setattr(seq2seq.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        check_model_config(small.model, vocab_sizes=(100, 100))
    assert f"{n:,} parameters" in str(info.value) and "tokenizer.src_vocab_size (100)" in str(info.value)
    check_model_config(small.model, vocab_sizes=(100, 100), training=False)  # one float32 copy fits


def test_nmt_config_validate_refuses_a_huge_model_with_exit_2(repo, tmp_path, capsys):
    from nmt.cli import main

    path = write(tmp_path, f"base: {repo / 'recipes/tiny.yaml'}\nmodel: {{decoder: {{hidden_size: 1000000000}}}}\n")
    assert main(["config", "validate", str(path)]) == 2
    assert "model.decoder.hidden_size (1,000,000,000)" in capsys.readouterr().err


@pytest.mark.parametrize("content, expected", [
    (b"data: {path: [unclosed\n", "YAML syntax error"),
    ("data: {path: caf\xe9}\n".encode("latin-1"), "not UTF-8"),
    (b"data: !!python/name:os.system x\n", "python/name"),
])
def test_a_broken_recipe_yaml_in_a_run_directory_is_a_clear_error(tmp_path, content, expected):
    from nmt.errors import NmtError
    from nmt.inference.checkpoint import load_run_recipe

    (tmp_path / "recipe.yaml").write_bytes(content)
    with pytest.raises(NmtError, match=expected) as info:
        load_run_recipe(tmp_path)
    assert str(tmp_path / "recipe.yaml") in str(info.value)


@pytest.mark.parametrize("section, expected", [
    ("train: {lr: .inf}", "train.lr: got inf, must be a finite number"),
    ("train: {lr: .nan}", "train.lr: got nan, must be a finite number"),
    ("model: {activation_options: {bogus: 1}}", "unknown option(s) bogus"),
])
def test_nmt_config_validate_refuses_what_training_would(repo, tmp_path, capsys, section, expected):
    from nmt.cli import main

    path = write(tmp_path, f"base: {repo / 'recipes/tiny.yaml'}\n{section}\n")
    assert main(["config", "validate", str(path)]) == 2
    assert expected in capsys.readouterr().err
