"""The MLP of ``pipeline.models.components.mlp`` with SIREN activations (the fused CPU kernel of
ReLU MLPs: ``tests/kernels/test_mlp_cpu.py``)."""
import math


def test_siren_mlp_uses_sine_activations_with_its_initialisation():
    from pipeline.models.components.mlp import MLP, Sine

    mlp = MLP(3, 1, width=64, num_hidden=3, activation="siren", siren_omega=30.0)
    assert isinstance(mlp.act, Sine)
    first = mlp.hidden[0].weight
    assert float(first.detach().abs().max()) <= 1 / 3 + 1e-6
    later = mlp.hidden[1].weight
    assert float(later.detach().abs().max()) <= math.sqrt(6 / 64) / 30 + 1e-6
