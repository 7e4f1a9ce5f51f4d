"""The Edit-RRM on vLLM inside reward-pool Ray actors (two workers, shared by every test of this module:
each engine start costs ~10-25 s and ~2 GiB here): batch scoring of sandbox edits, HF-vs-vLLM greedy
agreement, seeded sampling, and weight sync into the running engine."""
import math

import numpy as np
import pytest

pytestmark = pytest.mark.integration

MAX_TOKENS = 32


@pytest.fixture(scope="module")
def rrm_pool(ray_cluster, tiny_models, sandbox_dir):
    """Two RewardWorker actors hosting the tiny RRM on vLLM (fp32, compact prompt)."""
    from edit_rlhf.actors.reward import RewardWorker
    from edit_rlhf.cluster.pools import ActorPool
    from edit_rlhf.config import GRPOConfig, load_config

    from conftest import ROOT

    cfg = load_config(GRPOConfig, f"{ROOT}/configs/sandbox_tiny_rrm.yaml", [
        f"reward.rrm.path={tiny_models['rrm']}", "reward.size=2", f"reward.rrm.sampling.max_tokens={MAX_TOKENS}",
        f"editor.path={tiny_models['editor']}", f"data.train={sandbox_dir}/prompts_train"])
    splits = {"train": f"{sandbox_dir}/prompts_train"}
    pool = ActorPool("reward", RewardWorker, cfg.reward, lambda i: (cfg.reward, splits, f"reward-{i}", 1))
    try:
        infos = pool.wait_ready()
        yield pool, cfg, infos
    finally:
        import ray

        ray.get([a.shutdown.remote() for a in pool.actors])
        pool.shutdown()


@pytest.fixture(scope="module")
def requests_(tiny_models, sandbox_dir):
    """Greedy RRM requests for three sandbox prompts (source + target image), built in this process."""
    from edit_rlhf.data.prompts import EditPromptDataset
    from edit_rlhf.rrm.engine import GenRequest
    from edit_rlhf.rrm.prompt import RRMPrompt

    ds = EditPromptDataset(f"{sandbox_dir}/prompts_train")
    p = RRMPrompt.from_path(tiny_models["rrm"], "compact")
    rows = [ds.row(i) for i in range(3)]
    return [GenRequest(p.text(r["instruction"], r["principles"]), [r["source_image"], r["target_image"]], seed=i)
            for i, r in enumerate(rows)]


def test_two_vllm_reward_workers_score_a_batch_of_sandbox_edits(rrm_pool, sandbox_dir):
    import datasets
    import ray

    from edit_rlhf.data.images import decode_image

    pool, cfg, infos = rrm_pool
    assert [i["scorer_info"]["backend"] for i in infos] == ["vllm", "vllm"]
    cands = datasets.load_from_disk(f"{sandbox_dir}/candidates").cast_column("edited_image", datasets.Image(decode=False))
    by_prompt = {}
    for c in cands:
        by_prompt.setdefault(c["prompt_id"], []).append(decode_image(c["edited_image"]))
    refs = []
    for k in range(4):  # 4 prompts x 4 graded candidates, alternating workers
        imgs = np.stack(by_prompt[f"train-{k:06d}"])
        refs.append(pool.actors[k % 2].score.remote("train", k, ray.put(imgs)))
    results = ray.get(refs)
    assert {r["worker"] for r in results} == {"reward-0", "reward-1"}
    for r in results:
        assert len(r["rewards"]) == len(r["ok"]) == len(r["details"]) == len(r["oracle_scores"]) == 4
        for rew, ok, err, d in zip(r["rewards"], r["ok"], r["errors"], r["details"]):
            # random weights: nothing parses; each edit is a counted failure with its trace, never an exception
            assert not ok and math.isnan(rew) and err.startswith("no parsable RRM verdict in 1 sample")
            assert d["parse_ok"] == 0.0 and d["n_samples"] == 1 and d["n_valid"] == 0 and d["rm_version"] == 0
            assert isinstance(d["trace"], str) and 0 < d["gen_tokens"] <= MAX_TOKENS and d["parse_errors"]
        assert all(0 <= o <= 10 for o in r["oracle_scores"])
    infos = ray.get([a.info.remote() for a in pool.actors])
    assert [i["served"] for i in infos] == [2, 2]
    assert all(i["scorer_info"]["samples"] >= 8 and i["scorer_info"]["parsed"] == 0 for i in infos)


def _first_diff(a, b):
    return next((t for t, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def assert_same_greedy(hf, reqs, hf_out, vllm_out, lp_tol=1e-4):
    """HF and vLLM (both fp32) give the same greedy tokens; where they do not, the first differing position
    must be a numerical tie (HF's top-2 logit gap < 1e-3). Their log-probs of the shared tokens agree."""
    import torch

    for req, h, v in zip(reqs, hf_out, vllm_out):
        h, v = h[0], v[0]
        t = _first_diff(h.token_ids, v.token_ids)
        if h.token_ids != v.token_ids:
            enc = hf.inputs([req])
            ids = torch.cat([enc["input_ids"], torch.tensor([h.token_ids[:t]], dtype=enc["input_ids"].dtype)], 1)
            enc["input_ids"] = ids
            enc["attention_mask"] = torch.ones_like(ids)
            enc["mm_token_type_ids"] = torch.cat(
                [enc["mm_token_type_ids"], torch.zeros((1, t), dtype=enc["mm_token_type_ids"].dtype)], 1)
            with torch.no_grad():
                top2 = hf.model(**enc).logits[0, -1].float().topk(2).values
            assert float(top2[0] - top2[1]) < 1e-3, (t, h.token_ids, v.token_ids)
        else:
            assert h.text == v.text and h.finish_reason == v.finish_reason
        diff = np.abs(np.array(h.logprobs[:t]) - np.array(v.logprobs[:t]))
        assert diff.size == 0 or diff.max() < lp_tol, diff.max()


def test_hf_and_vllm_agree_and_weight_sync_changes_the_engine(rrm_pool, requests_, tiny_models):
    import ray
    import torch

    from edit_rlhf.config.rrm import HFEngineConfig
    from edit_rlhf.rrm.engine import SamplingSpec
    from edit_rlhf.rrm.hf_engine import HFEngine

    pool, _, _ = rrm_pool
    actor = pool.actors[0]
    spec = SamplingSpec(n=1, temperature=0.0, max_tokens=MAX_TOKENS, logprobs=True)
    hf = HFEngine(tiny_models["rrm"], HFEngineConfig(batch_size=1))
    v0 = ray.get(actor.call.remote("generate", requests_, spec))
    assert_same_greedy(hf, requests_, hf.generate(requests_, spec), v0)
    # teacher-forced HF log-probs of vLLM's tokens (what a learner recomputes) match vLLM's sampling log-probs
    tf = hf.token_logprobs(requests_[0], v0[0][0].token_ids)
    assert np.abs(tf.numpy() - np.array(v0[0][0].logprobs)).max() < 1e-4
    # the most likely tokens per position (soft RRM scores, rrm/soft.py): vLLM's logprobs=k and HF's top-k agree
    top_spec = SamplingSpec(n=1, temperature=0.0, max_tokens=MAX_TOKENS, top_logprobs=5, top_logprobs_at="all")
    vt, ht = ray.get(actor.call.remote("generate", requests_[:1], top_spec))[0][0], hf.generate(requests_[:1], top_spec)[0][0]
    assert vt.token_ids == v0[0][0].token_ids and len(vt.top_logprobs) == len(vt.token_ids)
    t = _first_diff(vt.token_ids, ht.token_ids)
    for k in range(t):
        common = set(vt.top_logprobs[k]) & set(ht.top_logprobs[k])
        assert vt.token_texts[k] in common and len(common) >= 3, (k, vt.top_logprobs[k], ht.top_logprobs[k])
        assert max(abs(vt.top_logprobs[k][x] - ht.top_logprobs[k][x]) for x in common) < 1e-4

    # weight sync: new weights (HF names, as a learner's state_dict) into the running engine
    original = {k: v.clone() for k, v in hf.model.state_dict().items() if k != "lm_head.weight"}  # tied
    g = torch.Generator().manual_seed(0)
    new = [(k, v + 0.05 * torch.randn(v.shape, generator=g)) for k, v in original.items()]
    assert ray.get(actor.call.remote("load_weights", new)) == 1
    v1 = ray.get(actor.call.remote("generate", requests_, spec))
    assert any(a[0].token_ids != b[0].token_ids for a, b in zip(v0, v1))
    hf.load_weights(new)
    assert_same_greedy(hf, requests_, hf.generate(requests_, spec), v1)  # the engine holds exactly the new weights
    assert len({t for o in v1 for t in o[0].token_ids}) > 1  # not one repeated token (random nets loop)

    # the other worker still has the old weights; loading the originals back restores the engine exactly
    assert [c[0].token_ids for c in ray.get(pool.actors[1].call.remote("generate", requests_, spec))] == \
        [c[0].token_ids for c in v0]
    assert ray.get(actor.call.remote("load_weights", list(original.items()))) == 2
    v2 = ray.get(actor.call.remote("generate", requests_, spec))
    for a, b in zip(v0, v2):
        assert a[0].token_ids == b[0].token_ids and np.allclose(a[0].logprobs, b[0].logprobs, atol=1e-6)
    info = ray.get(actor.info.remote())
    assert info["scorer_info"]["version"] == 2


def test_seeded_sampling_and_engine_timeout(rrm_pool, requests_):
    import ray

    from edit_rlhf.rrm.engine import SamplingSpec

    actor = rrm_pool[0].actors[1]
    spec = SamplingSpec(n=3, temperature=1.0, max_tokens=12)
    a, b = ray.get([actor.call.remote("generate", requests_, spec) for _ in range(2)])
    assert [[c.token_ids for c in r] for r in a] == [[c.token_ids for c in r] for r in b]  # seeds fix samples
    assert all(len({tuple(c.token_ids) for c in r}) > 1 for r in a)  # ... and the n samples differ
    late = ray.get(actor.call.remote("generate", requests_, SamplingSpec(max_tokens=MAX_TOKENS), 1e-6))
    assert {c[0].finish_reason for c in late} == {"timeout"}
    again = ray.get(actor.call.remote("generate", requests_[:1], SamplingSpec(max_tokens=4)))
    assert len(again[0][0].token_ids) == 4  # aborted requests leave the engine usable
