"""dare: E[delta~] = delta over the Bernoulli draws; the dropped fraction is about p."""

import torch

from tinymodels import assert_only_trainable_changed, moved_llama
from dowser.methods import get_method
from dowser.methods.dare import drop_and_rescale
from dowser.posthoc import PostHocContext


def test_rescale_is_unbiased_and_drops_p():
    delta = torch.randn(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p, seeds = 0.9, 500
    draws = torch.stack([drop_and_rescale(delta, p, True, torch.Generator().manual_seed(s)) for s in range(seeds)])
    dropped = (draws == 0).double().mean()
    assert abs(float(dropped) - p) < 0.005
    # per entry: mean of 500 draws, std |delta| * sqrt(p / (1 - p) / 500) = 0.134 |delta|
    rel = (draws.mean(0) - delta) / delta.abs()
    assert abs(float(rel.mean())) < 0.01  # averaged over entries: unbiased
    assert float(rel.abs().max()) < 5 * (p / (1 - p) / seeds) ** 0.5
    kept = draws != 0
    torch.testing.assert_close(draws[kept], (delta / (1 - p)).expand_as(draws)[kept])
    no_rescale = drop_and_rescale(delta, p, False, torch.Generator().manual_seed(1))
    assert set(no_rescale[no_rescale != 0].tolist()) <= set(delta.tolist())


def test_post_train_touches_only_the_delta_of_trainable_modules():
    model, names, base_state, before = moved_llama(torch.float64, scale=0.01)  # every trainable weight moved
    modules = dict(model.named_modules())
    ft = {n: modules[n].weight.detach().clone() for n in names}
    dare = get_method("dare")
    dare.post_train(model, base_state, PostHocContext(batches=None, rho=0.1, depth=2))
    for n in names:
        w, w0 = modules[n].weight, base_state[n]
        dropped = w == w0
        assert 0.8 < float(dropped.double().mean()) < 0.97  # p = 1 - rho = 0.9
        torch.testing.assert_close(w[~dropped], (w0 + (ft[n] - w0) / 0.1)[~dropped])
    assert_only_trainable_changed(model, names, before)
