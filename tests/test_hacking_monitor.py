"""Reward-hacking monitor: reward up with the judge flat warns; both up does not."""
import numpy as np
import pytest

from edit_rlhf.grpo.monitor import HackingMonitor, pearson


def _run(reward_slope, judge_slope, steps=20, n=16, seed=0):
    rng = np.random.default_rng(seed)
    mon = HackingMonitor(window=4, threshold=1.0)
    out = []
    for t in range(steps):
        quality = rng.normal(0, 1, n)
        r = reward_slope * t + quality + rng.normal(0, 0.3, n)
        j = judge_slope * t + quality + rng.normal(0, 0.3, n)
        out.append(mon.update(r, j))
    return mon, out


def test_reward_rising_without_the_judge_warns_once_per_crossing():
    mon, out = _run(0.3, 0.0)
    assert mon.warnings == 1
    first = next(i for i, m in enumerate(out) if m.get("monitor/warning") == 1.0)
    assert first >= 7 and out[-1]["monitor/divergence"] > 1.0  # only after two full windows
    assert all("monitor/divergence" not in m for m in out[:7])


def test_reward_and_judge_rising_together_do_not_warn():
    mon, out = _run(0.3, 0.3)
    assert mon.warnings == 0 and abs(out[-1]["monitor/divergence"]) < 1.0
    assert out[-1]["monitor/reward_judge_corr"] > 0.5


def test_state_round_trip_and_pearson_edge_cases():
    mon, _ = _run(0.3, 0.0, steps=10)
    other = HackingMonitor(window=4, threshold=1.0)
    other.load(mon.state())
    assert other.divergence() == pytest.approx(mon.divergence())
    assert np.isnan(pearson([1, 2], [1, 2])) and np.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert pearson([1, 2, 3, float("nan")], [2, 4, 6, 1]) == pytest.approx(1.0)


def test_within_group_figures_separate_prompt_difficulty_from_ranking():
    """A reward that follows the judge only through each prompt's difficulty correlates with it across samples
    and ranks a group's edits at random; one that ranks them like the judge is concordant; ties are counted."""
    from edit_rlhf.grpo.monitor import within_groups

    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 5, (64, 1))
    judge = difficulty + rng.normal(0, 1, (64, 8))
    by_prompt = difficulty + rng.normal(0, 1, (64, 8))  # the prompt's level, a random ranking inside
    ranks = difficulty + (judge - difficulty) + rng.normal(0, 0.3, (64, 8))
    mon = HackingMonitor()
    m = mon.update(by_prompt.reshape(-1), judge.reshape(-1), group_size=8)
    assert m["monitor/reward_judge_corr"] > 0.9
    assert abs(m["monitor/within_group_corr"]) < 0.1 and abs(m["monitor/within_group_concordance"] - 0.5) < 0.05
    good = within_groups(ranks, judge)
    assert good["monitor/within_group_corr"] > 0.9 and good["monitor/within_group_concordance"] > 0.85
    assert good["monitor/within_group_reward_ties"] == 0.0
    tied = within_groups(np.round(ranks / 4), judge)  # a coarse reward: many ties inside a group
    assert tied["monitor/within_group_reward_ties"] > 0.2
    nan = judge.copy()
    nan[0, :4] = np.nan  # a failed judge score leaves its pairs out
    assert within_groups(ranks, nan)["monitor/within_group_concordance"] > 0.85
    with pytest.raises(ValueError, match="same"):
        within_groups(ranks, judge[:, :4])
    assert "monitor/within_group_corr" not in HackingMonitor().update([1.0, 2.0, 3.0], [1.0, 2.0, 2.5])
