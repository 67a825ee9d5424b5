"""Models from other libraries, built from small configs (no weights are downloaded). Each test
runs only where its package is installed (the extras ``modgraph[hf]`` and ``modgraph[lens]``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from modgraph import find_modules, interaction_basis


def test_hugging_face_model_from_a_config():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=40,
        n_positions=8,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 40, (96, 6))
    layers = ["transformer.h.0", "transformer.h.1", "transformer.ln_f"]  # the residual stream
    bases = interaction_basis(
        model, ids, layers=layers, positions=[-1], output=lambda o: o.logits, progress=False
    )
    assert list(bases) == [*layers, "output"]
    with torch.no_grad():  # modgraph runs a float64 copy by default: so does the reference
        logits = copy.deepcopy(model).double()(ids).logits[:, -1]
    np.testing.assert_allclose(bases["output"].mean, logits.mean(0).numpy(), rtol=1e-9, atol=1e-12)
    result = find_modules(
        model, ids, layers=layers, positions=[-1], output=lambda o: o.logits, progress=False
    )
    assert result.interaction_graph.sizes[0] == bases["transformer.h.0"].k


def test_transformer_lens_hook_points():
    lens = pytest.importorskip("transformer_lens")
    config = lens.HookedTransformerConfig(
        n_layers=1,
        d_model=16,
        d_head=8,
        n_heads=2,
        d_mlp=32,
        d_vocab=20,
        n_ctx=8,
        act_fn="relu",
        normalization_type=None,
    )
    torch.manual_seed(0)
    model = lens.HookedTransformer(config)
    ids = torch.randint(0, 20, (64, 5))
    layers = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.mlp.hook_pre"]
    result = find_modules(model, ids, layers=layers, positions=[-1], progress=False)
    assert list(result.bases) == [*layers, "output"]
