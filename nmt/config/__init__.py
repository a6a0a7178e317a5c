"""Typed recipes: the schema (:mod:`~nmt.config.schema`), reading recipe files
(:mod:`~nmt.config.loading`, :mod:`~nmt.config.yamlfile`), validation
(:mod:`~nmt.config.validation`) and the decode settings as command-line options
(:mod:`~nmt.config.options`).

``load_recipe(path, overrides)`` reads a recipe with its ``base:`` chain, expands environment
variables, applies ``--set`` overrides and validates it; every problem is reported with its key
path, and the file it came from.
"""
from nmt.config.loading import apply_overrides, load_recipe, merge_recipes, parse_override, read_recipe
from nmt.config.options import add_decode_arguments, decode_arguments, decode_flag, decode_flag_label
from nmt.config.schema import (
    ACTIVATIONS,
    BLEU_TOKENIZERS,
    KERNELS,
    PRECISIONS,
    METRICS,
    AttentionConfig,
    DataConfig,
    DecodeConfig,
    DecoderConfig,
    EncoderConfig,
    EvalConfig,
    FilterConfig,
    ModelConfig,
    OutputConfig,
    Recipe,
    TokenizerConfig,
    TrainConfig,
    resolved_run_dir,
    setting,
)
from nmt.config.validation import (
    STOP_KEYS,
    check_stops,
    cross_field_problems,
    field_problems,
    recipe_from_dict,
    section_problems,
)
from nmt.config.yamlfile import (
    MAX_YAML_DEPTH,
    EnvValue,
    RecipeLoader,
    RecipeYAMLError,
    expand_env,
    expand_env_values,
    parse_yaml,
    read_yaml_file,
)
from nmt.errors import ConfigError

__all__ = [
    "ACTIVATIONS", "BLEU_TOKENIZERS", "KERNELS", "PRECISIONS", "MAX_YAML_DEPTH", "METRICS", "STOP_KEYS",
    "AttentionConfig", "ConfigError", "DataConfig", "DecodeConfig", "DecoderConfig", "EncoderConfig",
    "EnvValue", "EvalConfig", "FilterConfig", "ModelConfig", "OutputConfig", "Recipe", "RecipeLoader",
    "RecipeYAMLError", "TokenizerConfig", "TrainConfig",
    "add_decode_arguments", "apply_overrides", "check_stops", "cross_field_problems", "decode_arguments",
    "decode_flag", "decode_flag_label", "expand_env", "expand_env_values", "field_problems",
    "load_recipe", "merge_recipes", "parse_override", "parse_yaml", "read_recipe", "read_yaml_file",
    "recipe_from_dict", "resolved_run_dir", "section_problems", "setting",
]
