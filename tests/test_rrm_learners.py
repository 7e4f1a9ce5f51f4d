"""Edit-RRM learner ranks on local Ray: one DeepSpeed (ZeRO-2) rank and two give the same loss and the same
update on the same batch (SFT and GCPO), and a GCPO update synced into a running vLLM engine gives the engine
the learner's log-probs for a fixed trace (and changes them). Engines and groups are started once here."""
import numpy as np
import pytest

pytestmark = pytest.mark.integration

TOL_LOSS = 1e-5  # relative, 1 vs 2 ranks (fp32; different reduction order)
TOL_LP = 2e-4  # absolute per-token log-prob, vLLM (fp32) vs the learner (fp32)


@pytest.fixture(scope="module")
def batch(tiny_models, sandbox_dir):
    """GCPO requests (winner/loser images of 3 sandbox pairs) and traces: the oracle's trace texts, tokenized
    (so no sampling is needed), with hand-set advantages including zeros and a parse failure's negative one."""
    from edit_rlhf.rrm.engine import GenRequest
    from edit_rlhf.rrm.prompt import RRMPrompt
    from edit_rlhf.rrm_train.data import TraceDataset, load_pairs

    prompt = RRMPrompt.from_path(tiny_models["rrm"], "compact")
    tok = prompt.processor.tokenizer
    pairs = load_pairs(f"{sandbox_dir}/pairs_train").head(3)
    traces = TraceDataset(f"{sandbox_dir}/traces_train")
    reqs, items = [], []
    advs = [0.5, -0.25, 0.0, 0.75, -0.5, 0.25]
    for k in range(3):
        p = pairs[k]
        text = prompt.text(p.instruction, p.principles)
        reqs += [GenRequest(text, [p.source, p.winner], seed=k), GenRequest(text, [p.source, p.loser], seed=k + 9)]
        for side in range(2):
            ids = tok(traces.row(2 * k + side)["trace_text"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
            items.append({"pair": k, "side": "wl"[side], "j": 0, "req": 2 * k + side, "ids": ids,
                          "adv": advs[2 * k + side], "mask": True, "lp": None})
    return reqs, items


def gcpo_cfg(path, tmp, *extra):
    from conftest import ROOT

    from edit_rlhf.config import load_config
    from edit_rlhf.config.rrm_train import RRMGCPOConfig

    return load_config(RRMGCPOConfig, f"{ROOT}/configs/rrm_gcpo_sandbox.yaml", [
        f"model.path={path}", "data.train=unused", f"output_dir={tmp}", "model.freeze_vision=false",
        "algo.micro_batch_size=2", "optim.lr=1e-2", *extra])


def run_gcpo_step(cfg, ranks, reqs, items):
    import ray

    from edit_rlhf.cluster.pools import LearnerGroup
    from edit_rlhf.rrm_train.gcpo import rank_plan

    cfg.learner.size = ranks
    g = LearnerGroup(f"gcpo_eq{ranks}", "edit_rlhf.rrm_train.gcpo_learner:GCPOLearner", cfg, cfg.learner, 1)
    try:
        plan, totals = rank_plan(items, 3, ranks, cfg.algo.micro_batch_size, True)
        ref = ray.put(reqs)
        out = g.call_ranks("train_step", [(ref, plan[r], totals) for r in range(ranks)])
        digest = g.broadcast("weights_digest")
        after = ray.get(g.actors[0].call.remote("score", reqs, items[:2]))
        return out, digest, after
    finally:
        g.shutdown()


def test_gcpo_one_rank_equals_two_ranks_on_the_same_batch(ray_cluster, tiny_models, batch, tmp_path):
    reqs, items = batch
    cfg = gcpo_cfg(tiny_models["rrm"], tmp_path)
    out1, dig1, after1 = run_gcpo_step(cfg, 1, reqs, items)
    out2, dig2, after2 = run_gcpo_step(cfg, 2, reqs, items)
    l1, l2 = out1[0]["loss"], out2[0]["loss"]
    # ratio 1 at the first update: loss = -mean over the 6 participating traces of A (zeros included)
    assert l1 == pytest.approx(-np.mean([it["adv"] for it in items]), abs=1e-6)
    print(f"\n[gcpo 1 vs 2 ranks] loss {l1:.9f} vs {l2:.9f} (|diff| {abs(l1 - l2):.2e}); weight digest "
          f"{dig1[0]:.9f} vs {dig2[0]:.9f}; log-probs after max |diff| "
          f"{np.abs(np.concatenate(after1) - np.concatenate(after2)).max():.2e}")
    assert abs(l1 - l2) <= TOL_LOSS * max(1.0, abs(l1))
    assert out1[0]["traces_trained"] == out2[0]["traces_trained"] == 5  # the A = 0 trace is skipped
    assert out2[0]["loss"] == out2[1]["loss"] and dig2[0] == pytest.approx(dig2[1], rel=1e-12)  # ranks agree
    assert dig1[0] == pytest.approx(dig2[0], rel=1e-6)  # and the update is the same as one rank's
    np.testing.assert_allclose(np.concatenate(after1), np.concatenate(after2), atol=1e-5)


def test_sft_one_rank_equals_two_ranks_on_the_same_batch(ray_cluster, tiny_models, sandbox_dir, tmp_path):
    from conftest import ROOT

    from edit_rlhf.cluster.pools import LearnerGroup
    from edit_rlhf.config import load_config
    from edit_rlhf.config.rrm_train import RRMSFTConfig

    res = {}
    # 1 rank, 2 ranks, and 1 rank in micro-batches of 2 with gradient checkpointing (the real-scale settings)
    # and, with decision tokens weighted (verdict_weight), 1 rank vs 2 ranks in micro-batches
    for key, ranks, extra in ((1, 1, []), (2, 2, []), ("micro", 1, ["micro_batch_size=2",
                                                                    "learner.gradient_checkpointing=true"]),
                              ("w1", 1, ["verdict_weight=10"]), ("w2", 2, ["verdict_weight=10", "micro_batch_size=1"])):
        cfg = load_config(RRMSFTConfig, f"{ROOT}/configs/rrm_sft_sandbox.yaml", [
            f"model.path={tiny_models['rrm']}", f"data.train={sandbox_dir}/traces_train", "data.eval=null",
            "data.pairs_eval=null", "batch_size=4", f"learner.size={ranks}", f"output_dir={tmp_path}", *extra])
        g = LearnerGroup(f"sft_eq{key}", "edit_rlhf.rrm_train.sft_learner:RRMSFTLearner", cfg, cfg.learner, 1)
        try:
            res[key] = (g.broadcast("train_steps", 2), g.broadcast("info"))
        finally:
            g.shutdown()
    (h1, _), (h2, _), (hm, _) = res[1], res[2], res["micro"]
    print(f"\n[sft 1 vs 2 ranks vs micro] losses {[s['loss'] for s in h1[0]]} vs {[s['loss'] for s in h2[0]]} "
          f"vs {[s['loss'] for s in hm[0]]}")
    for s1, s2, sm in zip(h1[0], h2[0], hm[0]):  # global token-mean losses of steps 1 and 2 (after the updates)
        assert abs(s1["loss"] - s2["loss"]) <= TOL_LOSS * s1["loss"] and s1["tokens"] == s2["tokens"]
        assert abs(s1["loss"] - sm["loss"]) <= TOL_LOSS * s1["loss"] and s1["tokens"] == sm["tokens"]
    assert h2[0][1]["loss"] == h2[1][1]["loss"]
    (w1, _), (w2, _) = res["w1"], res["w2"]
    for a, b in zip(w1[0], w2[0]):  # the logged loss stays the plain token mean; the weighted one steers the update
        assert abs(a["loss"] - b["loss"]) <= TOL_LOSS * a["loss"] and a["tokens"] == b["tokens"]
    assert w1[0][0]["loss"] == h1[0][0]["loss"] and w1[0][1]["loss"] != h1[0][1]["loss"]


def test_gcpo_update_synced_into_vllm_matches_the_learner(ray_cluster, tiny_models, batch, tmp_path):
    """Engine and learner agree on a fixed trace's log-probs before an update; after the update and one bucketed
    sync the engine reports the learner's version and the learner's new log-probs, which differ from before."""
    import ray

    from edit_rlhf.actors.rrm_rollout import RRMRolloutWorker
    from edit_rlhf.cluster.pools import LearnerGroup
    from edit_rlhf.rrm_train.gcpo import rank_plan

    reqs, items = batch
    cfg = gcpo_cfg(tiny_models["rrm"], tmp_path, "model.freeze_vision=true", "sync.bucket_mb=0.25")
    cfg.rollout.engine.path = tiny_models["rrm"]
    worker = RRMRolloutWorker.options(num_cpus=1).remote(cfg.rollout.engine, "probe", 1, 0)
    g = LearnerGroup("gcpo_sync", "edit_rlhf.rrm_train.gcpo_learner:GCPOLearner", cfg, cfg.learner, 1)
    try:
        req, ids = reqs[0], items[0]["ids"]
        e0 = np.array(ray.get(worker.score_completion.remote(req, ids)))
        l0 = np.array(ray.get(g.actors[0].call.remote("score_completion", req, ids)))
        assert np.abs(e0 - l0).max() < TOL_LP
        plan, totals = rank_plan(items, 3, 1, 2, True)
        g.call_ranks("train_step", [(ray.put(reqs), plan[0], totals)])
        (ref,) = ray.get(g.actors[0].put.remote("weight_buckets"))
        wb = ray.get(ref)
        assert len(wb.buckets) > 1 and wb.version == 1  # several buckets, one object
        assert not any(n.startswith("model.visual") for n in wb.names())  # a frozen tower is not sent
        assert ray.get(worker.load_weights.remote(ref)) == 1  # the engine reports the learner's version
        e1 = np.array(ray.get(worker.score_completion.remote(req, ids)))
        l1 = np.array(ray.get(g.actors[0].call.remote("score_completion", req, ids)))
        print(f"\n[sync] before: engine vs learner max |dlp| {np.abs(e0 - l0).max():.2e}; after: "
              f"{np.abs(e1 - l1).max():.2e}; change by the update {np.abs(e1 - e0).max():.3f} "
              f"(mean lp {e0.mean():.4f} -> {e1.mean():.4f}); {len(wb)} tensors, {wb.nbytes / 1e6:.2f} MB in "
              f"{len(wb.buckets)} buckets")
        assert np.abs(e1 - l1).max() < TOL_LP
        assert np.abs(e1 - e0).max() > 100 * TOL_LP  # the sync changed the engine
    finally:
        g.shutdown()
        ray.get(worker.shutdown.remote())
        ray.kill(worker)
