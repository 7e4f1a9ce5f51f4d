"""Flow-GRPO maths: SDE step, log-probs, advantages, clipped loss, KL (pure functions, no models)."""
import math

import pytest
import torch

from edit_rlhf.algorithms.flow_grpo import (clipped_policy_loss, gaussian_log_prob, group_advantages,
                                            kl_to_reference, num_train_timesteps, ode_step, sde_std, sde_step,
                                            sde_step_mean)
from edit_rlhf.algorithms.sampler import sample_ode, sample_sde


def test_sde_mean_with_zero_noise_is_the_euler_step():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    mean, std_t, scale = sde_step_mean(v, x, torch.tensor(0.7), torch.tensor(0.4), 0.9, 0.0)
    assert torch.equal(mean, ode_step(v, x, 0.7, 0.4))
    assert float(std_t.abs().max()) == 0.0 and float(scale.abs().max()) == 0.0


def test_sde_std_schedule_and_sigma_one_substitution():
    s = torch.tensor([1.0, 0.5, 0.25])
    std = sde_std(s, sigma_max=0.8, noise_level=0.9)
    assert std[1].item() == pytest.approx(0.9 * math.sqrt(0.5 / 0.5))
    assert std[2].item() == pytest.approx(0.9 * math.sqrt(0.25 / 0.75))
    assert std[0].item() == pytest.approx(0.9 * math.sqrt(1 / (1 - 0.8)))  # t = 1 uses sigma_max


def test_gaussian_log_prob_is_the_per_element_mean_of_normal_log_density():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(2, 6, 3, generator=g)
    scale = torch.tensor([0.3, 1.7]).view(2, 1, 1)
    x = mean + scale * torch.randn(2, 6, 3, generator=g)
    ref = torch.distributions.Normal(mean, scale.expand_as(mean)).log_prob(x).mean(dim=(1, 2))
    assert torch.allclose(gaussian_log_prob(x, mean, scale), ref, atol=1e-5)


def test_scoring_a_sampled_step_reproduces_its_log_prob():
    g = torch.Generator().manual_seed(2)
    x, v, noise = (torch.randn(4, 8, 2, generator=g) for _ in range(3))
    x1, lp, _, _ = sde_step(v, x, torch.tensor(0.8), torch.tensor(0.6), 0.8, 0.9, noise=noise)
    _, lp2, _, _ = sde_step(v, x, torch.tensor(0.8), torch.tensor(0.6), 0.8, 0.9, x_next=x1)
    assert torch.equal(lp, lp2)
    with pytest.raises(ValueError, match="noise"):
        sde_step(v, x, 0.8, 0.6, 0.8, 0.9)


def _gaussian_velocity(s0: float):
    """Exact velocity of rectified flow from data N(0, s0^2): v(x, t) = x (t - (1-t) s0^2) / var_t."""
    def v(x, timesteps, cond):
        t = (timesteps / 1000).view(-1, 1, 1)
        var = (1 - t) ** 2 * s0 ** 2 + t ** 2
        return x * (t - (1 - t) * s0 ** 2) / var
    return v


@pytest.mark.parametrize("noise_level", [0.5, 0.9])
def test_flow_grpo_sde_preserves_the_marginals(noise_level):
    """With the exact velocity of a Gaussian data law, SDE sampling must end at that law (the drift
    correction makes the SDE marginal-preserving); a sign or factor error in the mean breaks this."""
    s0, n, steps = 0.5, 2000, 200
    sig = torch.linspace(1, 0, steps + 1)
    ts = sig[:-1] * 1000
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    x = torch.stack([torch.randn(1, 1, generator=gn) for gn in gens])
    traj = sample_sde(_gaussian_velocity(s0), x, None, ts, sig, noise_level, steps - 1, 1, gens)
    assert traj.final.std().item() == pytest.approx(s0, rel=0.06)
    ode = sample_ode(_gaussian_velocity(s0), x, None, ts, sig)
    assert ode.std().item() == pytest.approx(s0, rel=0.06)


def test_sampler_is_deterministic_per_sample_seed_not_per_batch():
    v = _gaussian_velocity(0.3)
    sig = torch.linspace(1, 0, 5)
    ts = sig[:-1] * 1000
    x = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
    a = sample_sde(v, x, None, ts, sig, 0.9, 3, 3, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    b = sample_sde(v, x[1:2], None, ts, sig, 0.9, 3, 3, [torch.Generator().manual_seed(6)])
    assert torch.equal(a.latents[1:2], b.latents) and torch.equal(a.log_probs[1:2], b.log_probs)
    assert a.latents.shape == (3, 4, 4, 2) and a.log_probs.shape == (3, 3)


def test_group_advantages_by_key_with_failures_and_clipping():
    r = [1.0, 2.0, 3.0, 10.0, 10.0, float("nan"), 0.0, 4.0]
    keys = [("a", "x")] * 3 + [("b", "x")] * 3 + [("c", "y")] * 2
    adv = group_advantages(r, keys, std_eps=0.0, clip=5.0)
    s = math.sqrt(2 / 3)
    assert adv[:3].tolist() == pytest.approx([-1 / s, 0.0, 1 / s], rel=1e-6)
    assert math.isnan(adv[5].item())  # failed reward: no advantage
    assert adv[3].item() == 0.0 and adv[4].item() == 0.0  # zero-variance group -> 0 (eps > 0 avoids 0/0)
    assert adv[6:].tolist() == pytest.approx([-1.0, 1.0])
    big = group_advantages([0, 0, 0, 0, 0, 0, 0, 0, 0, 100], ["k"] * 10, clip=2.0)
    assert big.max().item() == 2.0  # clipped
    same_text_two_images = group_advantages([0.0, 1.0, 5.0, 6.0], [("img1", "t"), ("img1", "t"),
                                                                   ("img2", "t"), ("img2", "t")], std_eps=0)
    assert same_text_two_images.tolist() == pytest.approx([-1, 1, -1, 1])  # not merged by instruction text


def test_group_advantages_global_std():
    adv = group_advantages([0.0, 2.0, 10.0, 14.0], ["a", "a", "b", "b"], std_eps=0.0, global_std=True)
    gstd = torch.tensor([0.0, 2.0, 10.0, 14.0]).std(unbiased=False).item()
    assert adv.tolist() == pytest.approx([-1 / gstd, 1 / gstd, -2 / gstd, 2 / gstd], rel=1e-5)


def test_clipped_policy_loss_values_and_gradients():
    old = torch.zeros(4)
    lp = torch.tensor([0.0, 0.1, -0.1, 0.05], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0])
    loss, st = clipped_policy_loss(lp, old, adv, clip_range=0.02)
    ratio = torch.exp(lp.detach())
    expect = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.98, 1.02)).mean()
    assert loss.item() == pytest.approx(expect.item())
    assert st["clip_frac"].item() == pytest.approx(0.75)
    loss.backward()
    # clipped terms where clipping binds (A>0 and rho>1+eps; A<0 and rho<1-eps) give no gradient
    assert lp.grad[1].item() == 0.0 and lp.grad[2].item() == 0.0
    assert lp.grad[0].item() == pytest.approx(-1 / 4)
    assert lp.grad[3].item() == pytest.approx(2 * math.exp(0.05) / 4)


def test_kl_to_reference_forms():
    mean = torch.ones(2, 3, 1)
    ref = torch.zeros(2, 3, 1)
    std = torch.tensor([0.5, 1.0]).view(2, 1, 1)
    assert kl_to_reference(mean, ref, std).tolist() == pytest.approx([1 / (2 * 0.25), 1 / 2])
    dt = torch.tensor([-0.5, -0.25])
    assert kl_to_reference(mean, ref, std, dt).tolist() == pytest.approx([1 / (2 * 0.25 * 0.5), 1 / (2 * 0.25)])
    assert kl_to_reference(mean, mean, std).abs().max().item() == 0.0


def test_num_train_timesteps_matches_flow_grpo():
    assert num_train_timesteps(6, 0.99) == 5 and num_train_timesteps(10, 0.99) == 9 and num_train_timesteps(1, 0.1) == 1
