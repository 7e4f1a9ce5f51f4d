"""The driver skeleton's pool maintenance between steps, without Ray (fake pools): a resize request reaches only
the pools a pipeline lists as elastic; added and stale actors are handed to `on_pool_change`, re-syncs counted.
(tests/test_driver_skeleton.py runs the ignored request on Ray.)"""
from types import SimpleNamespace

from edit_rlhf.cluster.control import request_scale
from edit_rlhf.pipelines.driver import Driver


class FakePool:
    def __init__(self, name, size):
        self.name, self.size = name, size

    def resize(self, n):
        added = list(range(self.size, n))
        self.size = n
        return added

    def health_check(self, timeout_s):
        return {"infos": {i: {"version": 0 if i == 0 else 1} for i in range(self.size)}}

    def alive(self):
        return list(range(self.size))


class FakeDriver(Driver):
    name = "fake"
    elastic = ("rollout",)

    def __init__(self, output_dir):
        super().__init__(SimpleNamespace(output_dir=output_dir), quiet=True)
        self.tracker = SimpleNamespace(set_tags=lambda tags: self.tags_set.append(tags))
        self.tags_set, self.changed = [], []
        self.pools = {"rollout": FakePool("rrm_rollout", 1), "learner": FakePool("learner", 1)}

    def stale_actors(self, name, infos):
        return [i for i, info in infos.items() if info["version"] != 1]

    def on_pool_change(self, name, actors):
        self.changed.append((name, actors))


def test_scale_request_resizes_elastic_pools_and_ignores_others(tmp_path, capsys):
    d = FakeDriver(str(tmp_path))
    request_scale(str(tmp_path), {"rollout": 3, "reward": 2})  # this pipeline has no reward pool
    m = d.maintain_pools(timeout_s=1.0)
    assert d.pools["rollout"].size == 3 and m["pool/rrm_rollout_size"] == 3 and m["pool/rrm_rollout_alive"] == 3
    assert d.changed == [("rollout", [1, 2]), ("rollout", [0])]  # the added actors, then the stale one
    assert d.counters["actor_resyncs"] == 1
    assert "pool 'reward' cannot be resized here" in capsys.readouterr().out
    assert d.maintain_pools(timeout_s=1.0)["pool/rrm_rollout_size"] == 3  # the request was consumed
