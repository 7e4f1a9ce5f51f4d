"""GCPO rewards and advantages against hand-computed values; token-mean clip loss; T+V trace selection."""
import math

import pytest
import torch

from edit_rlhf.algorithms.gcpo import (gcpo_advantages, gcpo_rewards, select_trace, token_mean_clip_loss,
                                       weighted_advantage)

NAN = float("nan")

# (scores_w, scores_l, failure, r_w, r_l, adv_w, adv_l)
CASES = [
    # the paper's example shape: N=2, strict comparisons
    ([8, 6], [5, 7], "lowest", [1.0, 0.5], [1.0, 0.5], [0.25, -0.25], [0.25, -0.25]),
    # ties count 0 on both sides
    ([7, 7], [7, 7], "lowest", [0, 0], [0, 0], [0, 0], [0, 0]),
    ([7, 9], [7, 3], "lowest", [0.5, 1.0], [0.5, 1.0], [-0.25, 0.25], [-0.25, 0.25]),
    # all-correct group: every winner-trace beats every loser-trace -> r = 1 everywhere -> A = 0 (no gradient)
    ([9, 8, 10], [1, 2, 0], "lowest", [1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]),
    # all-wrong group: reversed ordering -> r = 0 everywhere -> A = 0
    ([1, 2], [8, 9], "lowest", [0, 0], [0, 0], [0, 0], [0, 0]),
    # parse failure, 'lowest': the failed winner-trace earns 0 but stays in its group; as an opponent it is a 0
    ([NAN, 8], [5, 0], "lowest", [0.0, 1.0], [0.5, 0.5], [-0.5, 0.5], [0.0, 0.0]),
    # the same, 'drop': the failed trace has no reward/advantage and is no opponent (denominator 1)
    ([NAN, 8], [5, 0], "drop", [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]),
    # a failed loser-trace is never credited for "scoring below" (it would learn to fail on bad images)
    ([6, 6], [NAN, 4], "lowest", [1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [-0.5, 0.5]),
    # every trace failed: nothing to learn
    ([NAN, NAN], [NAN, NAN], "drop", [0, 0], [0, 0], [0, 0], [0, 0]),
    # decimals and unequal margins still count as 0/1 comparisons
    ([7.5, 7.4, 2.0], [7.45, 1.0, 9.0], "lowest", [2 / 3, 1 / 3, 1 / 3], [1 / 3, 1.0, 0.0],
     [2 / 3 - 4 / 9, 1 / 3 - 4 / 9, 1 / 3 - 4 / 9], [1 / 3 - 4 / 9, 1.0 - 4 / 9, -4 / 9]),
]


@pytest.mark.parametrize("sw,sl,failure,rw,rl,aw,al", CASES)
def test_gcpo_rewards_and_advantages_hand_computed(sw, sl, failure, rw, rl, aw, al):
    out = gcpo_advantages(sw, sl, failure)
    assert out["r_w"] == pytest.approx(rw) and out["r_l"] == pytest.approx(rl)
    assert out["adv_w"] == pytest.approx(aw, abs=1e-12) and out["adv_l"] == pytest.approx(al, abs=1e-12)


def test_drop_policy_masks_failed_traces_and_bad_policy_is_rejected():
    _, _, mw, ml = gcpo_rewards([NAN, 8], [5, NAN], "drop")
    assert mw == [False, True] and ml == [True, False]
    with pytest.raises(ValueError, match="failure policy"):
        gcpo_rewards([1], [2], "ignore")


def test_std_normalisation_is_optional():
    plain = gcpo_advantages([8, 6], [5, 7])
    normed = gcpo_advantages([8, 6], [5, 7], std_norm=True)
    assert plain["adv_w"] == pytest.approx([0.25, -0.25])
    assert normed["adv_w"] == pytest.approx([1.0, -1.0], rel=1e-4)


def test_token_mean_loss_matches_hand_computation_and_zero_advantage_gives_no_gradient():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]], requires_grad=True)
    old = lp.detach().clone()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([0.5, -1.0])
    loss, st = token_mean_clip_loss(lp, old, mask, adv, clip=0.2)
    # ratio 1 everywhere: per-trace token mean of A -> (0.5 + -1.0)/2 traces, negated
    assert loss.item() == pytest.approx(-(0.5 - 1.0) / 2)
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([-0.5 / 3 / 2] * 3)  # d(-A*rho)/dlp = -A/L/T
    assert lp.grad[1].tolist() == pytest.approx([1.0 / 2 / 2, 1.0 / 2 / 2, 0.0])
    z = torch.zeros(2)
    lp2 = lp.detach().clone().requires_grad_(True)
    token_mean_clip_loss(lp2, old, mask, z, clip=0.2)[0].backward()
    assert lp2.grad.abs().max().item() == 0.0
    assert st["ratio_max_dev"].item() == 0.0 and st["traces"].item() == 2


def test_clipping_and_kl_term():
    old = torch.zeros(1, 2)
    lp = torch.tensor([[0.5, 0.0]], requires_grad=True)  # ratio e^0.5 on token 0 -> clipped for A > 0
    loss, st = token_mean_clip_loss(lp, old, torch.ones(1, 2), torch.tensor([1.0]), clip=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 1.0) / 2)
    assert st["clip_frac"].item() == pytest.approx(0.5)
    ref = torch.tensor([[0.0, 0.0]])
    loss_kl, st_kl = token_mean_clip_loss(lp, old, torch.ones(1, 2), torch.tensor([1.0]), 0.2, ref, beta=0.1)
    kl_tok0 = math.exp(-0.5) + 0.5 - 1
    assert st_kl["kl"].item() == pytest.approx(kl_tok0 / 2)
    assert loss_kl.item() == pytest.approx(loss.item() + 0.1 * kl_tok0 / 2)


def test_weighted_advantage_diagnostic():
    assert weighted_advantage([1.0, -1.0], [10, 20]) == pytest.approx((0.1 - 0.05) / 2)
    assert weighted_advantage([], []) == 0.0


SELECT = [
    # (candidates, gold, expected index, expected accuracy)
    ([([1, 0, 1], 0.67, 7), ([1, 1, 1], 1.0, 9)], [1, 0, 1], 0, 1.0),        # accuracy first
    ([([1, 1, 0], 0.67, 6), ([0, 1, 1], 0.67, 8)], [1, 1, 1], 1, 2 / 3),     # tie -> same avg -> higher score
    ([([1, 0, 0], 0.33, 9), ([0, 0, 1], 0.5, 2)], [1, 1, 1], 1, 1 / 3),      # tie -> higher average
    ([([1, 0], 0.5, 5), ([1, 0], 0.5, 5)], [1, 0], 0, 1.0),                  # full tie -> lower index
    ([(None, None, None), ([0, 0], 0.0, 0)], [1, 1], 1, 0.0),               # unparsed ranks last
    ([(None, None, None), ([1], 1.0, 10)], [1, 1], 0, -1.0),                # wrong length = unparsed; first wins
]


@pytest.mark.parametrize("cands,gold,idx,acc", SELECT)
def test_trace_selection(cands, gold, idx, acc):
    assert select_trace(cands, gold) == (idx, pytest.approx(acc))
