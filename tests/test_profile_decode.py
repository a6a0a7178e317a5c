"""scripts/profile_decode.py: every phase of a search is attributed, the output layer included."""
from __future__ import annotations

import pytest

from conftest import load_script


@pytest.fixture
def profile_decode():
    return load_script("profile_decode")


@pytest.mark.parametrize("beam", [1, 3])
def test_each_phase_of_a_search_is_timed_and_the_classes_are_put_back(tiny_run, profile_decode, beam):
    from nmt.inference import torch_engine
    from nmt.inference.translator import Translator

    translator = Translator.load(tiny_run)
    sentences = ["Je suis malade.", "Tu es belle.", "Je suis en colère."]
    expected = translator.translate(sentences, beam=beam)
    scores = torch_engine.TorchEngine.scores
    timer = profile_decode.PhaseTimer()
    profile_decode.instrument(timer, translator)
    try:
        assert torch_engine.TorchEngine.scores is not scores
        assert translator.translate(sentences, beam=beam) == expected  # timing changes nothing
        for phase in ("encoder", "attention", "step GEMMs", "output layer", "log-normaliser", "search ops"):
            assert timer.calls[phase] > 0, phase
        assert sum(timer.seconds.values()) > 0
    finally:
        timer.restore()
    assert torch_engine.TorchEngine.scores is scores
