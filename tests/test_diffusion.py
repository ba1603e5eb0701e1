import torch

from spikediff.diffusion import (Refinement, diffusion_loss, mask_tokens, refine_step,
                                 sample_tokens, sampling_schedule)


def test_mask_probability_follows_schedule():
    x0 = torch.zeros(4000, 7, 7, dtype=torch.long)
    for t in (1, 10, 30, 49):
        xt, mask = mask_tokens(x0, torch.full((4000,), t), 49, mask_id=9)
        assert torch.equal(xt == 9, mask)
        assert abs(mask.float().mean().item() - t / 49) < 0.01
    _, mask = mask_tokens(x0, torch.full((4000,), 49), 49, 9)
    assert mask.all()


def test_schedule_ends_at_one_and_spans_steps():
    assert sampling_schedule(49, 49) == list(range(49, 0, -1))
    s = sampling_schedule(49, 10)
    assert len(s) == 10 and s[0] == 49 and s[-1] == 5
    assert sampling_schedule(49, 60)[-1] == 1


def test_sampler_reveals_every_token_and_argmax_at_low_temperature():
    K = 6
    target = torch.randint(0, K, (7, 7))

    def denoise(x, t):
        logits = torch.zeros(x.shape[0], K, 7, 7)
        logits.scatter_(1, target.expand(x.shape[0], 7, 7).unsqueeze(1), 5.0)
        return logits

    g = torch.Generator().manual_seed(0)
    for steps in (49, 7):
        out = sample_tokens(denoise, 3, (7, 7), K, 49, steps, temperature=1e-6, generator=g)
        assert (out != K).all()
        assert torch.equal(out, target.expand(3, 7, 7))
    hot = sample_tokens(denoise, 50, (7, 7), K, 49, 49, temperature=5.0, generator=g)
    assert (hot != target).any()  # high temperature does sample


def test_refinement_redraws_a_fraction_of_the_finished_grid():
    K, S, R, r = 6, 7, 12, 0.25
    target = torch.randint(1, K, (7, 7))  # never token 0
    calls = []

    def denoise(x, t):
        # The sampling steps propose token 0 everywhere, refinement steps the target:
        # only redrawing already revealed tokens can reach it.
        calls.append((x.clone(), t.clone()))
        best = torch.zeros_like(target) if len(calls) <= S else target
        return torch.nn.functional.one_hot(best, K).permute(2, 0, 1).expand(
            x.shape[0], K, 7, 7).float() * 50

    def run(refine_steps, n=200, seed=0):
        calls.clear()
        return sample_tokens(denoise, n, (7, 7), K, 49, S, temperature=1.0,
                             generator=torch.Generator().manual_seed(seed),
                             refine=Refinement(refine_steps, r, temperature=1.0))

    plain = run(0)
    assert len(calls) == S and (plain == 0).all()
    refined = run(R)
    assert len(calls) == S + R and (refined != K).all()
    for x, t in calls[S:]:  # a fraction r of a grid with no mask left, at the matching t
        assert (t == refine_step(49, r)).all() and refine_step(49, r) == 12
        assert abs((x == K).float().mean().item() - r) < 0.02
    # each token escapes all R redraws with probability 0.75 ** 12 = 3%
    assert abs((refined == 0).float().mean().item() - (1 - r) ** R) < 0.01
    assert ((refined == 0) | (refined == target)).all()
    assert refine_step(49, 1.0) == 49 and refine_step(49, 0.001) == 1
    # refinement draws from its own stream: batch after batch from one generator,
    # the unrefined samples are the same with or without it
    g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for steps, g in ((0, g0), (3, g1)):
        for _ in range(2):
            calls.clear()
            sample_tokens(denoise, 4, (7, 7), K, 49, S, temperature=1.0, generator=g,
                          refine=Refinement(steps))
    assert torch.equal(g0.get_state(), g1.get_state())


def test_loss_counts_only_masked_tokens():
    x0 = torch.randint(0, 4, (8, 3, 3))
    perfect = lambda x, t: torch.nn.functional.one_hot(x0, 4).permute(0, 3, 1, 2).float() * 50
    assert diffusion_loss(perfect, x0, 9, 4)["loss"] < 1e-6
    uniform = lambda x, t: torch.zeros(x.shape[0], 4, 3, 3)
    assert diffusion_loss(uniform, x0, 9, 4)["masked_ce"] > 1.3  # log 4 = 1.386


def test_loss_is_the_elbo_term_computed_by_hand():
    """The loss: each example's summed masked CE over t, per token; masked_ce:
    the plain mean over masked tokens, reported beside it. They differ when t
    varies, so the loss is not the plain mean by mistake."""
    torch.manual_seed(0)
    K, N = 4, 9
    x0 = torch.randint(0, K, (64, 3, 3))
    logits = torch.randn(1, K, 3, 3)
    net = lambda x, t: logits.expand(x.shape[0], -1, -1, -1)
    torch.manual_seed(1)
    out = diffusion_loss(net, x0, N, K)
    torch.manual_seed(1)  # the same t and masks, by hand
    t = torch.randint(1, N + 1, (64,))
    _, mask = mask_tokens(x0, t, N, K)
    ce = torch.nn.functional.cross_entropy(logits.expand(64, -1, -1, -1), x0, reduction="none") * mask
    assert torch.allclose(out["loss"], (ce.flatten(1).sum(1) / t).mean() / 9)
    assert torch.equal(out["loss"].detach(), out["elbo"])
    assert torch.allclose(out["masked_ce"], ce.sum() / mask.sum())
    assert not torch.allclose(out["loss"], out["masked_ce"])
