"""Issue 14, nothing lost and nothing leaked: secrets, re-runs, input paths, full disks, checkpoint retention,
the sqlite run store, clean stops and one-line errors."""
import errno
import json
import os
import secrets
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "sandbox_tiny.yaml")


def _files(*roots):
    for r in roots:
        for d, _, files in os.walk(r):
            for f in files:
                yield os.path.join(d, f)


# --------------------------------------------------------------------------- secrets
def test_redaction_by_key_words_env_maps_and_value():
    from edit_rlhf import redaction as r

    for k in ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY", "db_password", "clientSecret",
              "GITHUB_AUTH", "x-api-key"):
        assert r.is_secret_key(k), k
    for k in ("max_tokens", "tokenizer", "keep_last", "monkey", "path", "output_dir"):
        assert not r.is_secret_key(k), k
    value = "v-" + secrets.token_hex(8)
    r.register([value])
    out = r.scrub({"cluster": {"actor_env": {"PLAIN_NAME": "anything", "N": "1"}}, "note": f"ran with {value}",
                   "overrides": [f"cluster.actor_env.PLAIN_NAME={value}"], "steps": 3})
    assert out["cluster"]["actor_env"] == {"PLAIN_NAME": "***", "N": "***"} and out["steps"] == 3
    assert value not in json.dumps(out)
    flat = r.redact_flat({"cluster.actor_env.PLAIN_NAME": "x", "a.AWS_ACCESS_KEY_ID": "AKIA", "b": value, "c": "ok"})
    assert flat == {"cluster.actor_env.PLAIN_NAME": "***", "a.AWS_ACCESS_KEY_ID": "***", "b": "***", "c": "ok"}


def test_print_config_masks_actor_env(capsys):
    from edit_rlhf.cli import main

    tok = "hf_" + secrets.token_hex(12)
    assert main(["grpo", "--config", TINY, f"cluster.actor_env.HF_TOKEN={tok}", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "HF_TOKEN: '***'" in out and tok not in out


@pytest.mark.integration
def test_secret_values_appear_in_no_file_the_run_writes(ray_cluster, grpo_cfg, tmp_path, capsys):
    """A tiny GRPO run with secrets in actor_env: no file under output_dir or the MLflow folder holds them,
    checkpoint files are owner-only; then the same command again is refused (it would mix two runs)."""
    from edit_rlhf.checkpoint import CheckpointError, Checkpoints
    from edit_rlhf.pipelines.grpo import GRPOTrainer

    hf, aws = "hf_" + secrets.token_hex(16), "AKIA" + secrets.token_hex(8).upper()
    args = ("steps=2", "save_every=1", "eval_every=0", "data.eval=null", "tracking.log_images_every=1",
            f"cluster.actor_env.HF_TOKEN={hf}", f"cluster.actor_env.AWS_ACCESS_KEY_ID={aws}")
    cfg = grpo_cfg(*args)
    s = GRPOTrainer(cfg, quiet=True).run()
    assert s["steps"] == 2
    files = list(_files(cfg.output_dir, cfg.tracking.dir))
    assert any(f.endswith("state.json") for f in files) and any(f.endswith("config.json") for f in files)
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read()
        assert hf.encode() not in data and aws.encode() not in data, f
    ck = Checkpoints(cfg.output_dir)
    for f in _files(ck.root):
        assert not os.stat(f).st_mode & (stat.S_IRWXG | stat.S_IRWXO), f
    for d, dirs, _ in os.walk(ck.root):
        assert not os.stat(d).st_mode & (stat.S_IRWXG | stat.S_IRWXO), d
    assert "HF_TOKEN" in capsys.readouterr().err  # the one-time warning about Ray's runtime-env agent log

    # re-run without --resume: refused before anything starts, naming both ways out; the checkpoints stay
    with pytest.raises(CheckpointError, match=r"--resume.*--overwrite"):
        GRPOTrainer(grpo_cfg(*args), quiet=True).run()
    assert ck.latest().endswith("step_00000002")


# --------------------------------------------------------------------------- re-runs and retention
def _commit(ck, step, payload=b"x" * 1000):
    tmp = ck.begin(step)
    with ck.guard(tmp):
        with open(os.path.join(tmp, "weights.bin"), "wb") as f:
            f.write(payload)
        return ck.commit(step, tmp, {"step": step})


def test_fresh_run_refuses_another_runs_checkpoints_unless_overwrite(tmp_path):
    from edit_rlhf.checkpoint import CheckpointError, Checkpoints

    ck = Checkpoints(str(tmp_path / "out"))
    ck.claim(None)  # an empty folder is fine
    _commit(ck, 1)
    with pytest.raises(CheckpointError) as e:
        ck.resume_state(None)
    assert "--resume" in str(e.value) and "--overwrite" in str(e.value) and "\n" not in str(e.value)
    assert ck.resume_state("auto")[1]["step"] == 1  # resuming it is fine
    ck.resume_state(None, overwrite=True)  # overwrite: the old checkpoints are removed first
    assert ck.steps() == [] and ck.latest() is None


def test_keep_last_keeps_the_newest_and_never_the_latest_pointer(tmp_path):
    from edit_rlhf.checkpoint import Checkpoints

    ck = Checkpoints(str(tmp_path / "out"), keep_last=2)
    for s in range(1, 6):
        _commit(ck, s)
    assert ck.steps() == ["step_00000004", "step_00000005"]
    # a resumed run that re-saves an older step: `latest` names it, so it survives although it is the oldest
    ck.keep_last = 1
    _commit(ck, 3)
    assert ck.latest().endswith("step_00000003") and "step_00000003" in ck.steps()


# --------------------------------------------------------------------------- full disk
def test_full_disk_before_save_is_one_clear_error(tmp_path, monkeypatch):
    from edit_rlhf import checkpoint
    from edit_rlhf.checkpoint import CheckpointError, Checkpoints

    ck = Checkpoints(str(tmp_path / "out"), min_free_mb=64)
    _commit(ck, 1, payload=b"x" * (3 * 2 ** 20))
    total = shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: total._replace(free=10 * 2 ** 20))
    with pytest.raises(CheckpointError, match=r"no space left: need ~64 MB at .*, 10 MB free"):
        ck.begin(2)
    assert not [n for n in os.listdir(ck.root) if n.startswith(".tmp")]


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 1536 vs 1430")])
def test_full_disk_during_save_is_one_clear_error_and_no_temp_dir(tmp_path, monkeypatch, exc):
    import torch

    from edit_rlhf.checkpoint import CheckpointError, Checkpoints

    ck = Checkpoints(str(tmp_path / "out"))
    _commit(ck, 1)

    def full(*a, **k):
        raise exc

    monkeypatch.setattr(torch, "save", full)
    tmp = ck.begin(2)
    with pytest.raises(CheckpointError, match=r"^no space left: need ~\d+ MB at .*MB free"):
        with ck.guard(tmp):
            with open(os.path.join(tmp, "partial.bin"), "wb") as f:
                f.write(b"y" * 4096)
            torch.save({"w": torch.zeros(3)}, os.path.join(tmp, "model.pt"))
    assert not os.path.exists(tmp) and ck.latest().endswith("step_00000001")


# --------------------------------------------------------------------------- paths
def test_typo_in_editor_path_fails_at_once_and_writes_nothing(tmp_path):
    before = set(os.listdir(os.path.join(ROOT, "models")))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    t = time.time()
    p = subprocess.run([sys.executable, "-m", "edit_rlhf", "grpo", "--config", TINY, "editor.path=models/sanbox/editor",
                        f"output_dir={tmp_path}/out", f"tracking.dir={tmp_path}/mlruns"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    secs = time.time() - t
    assert p.returncode == 2, p.stderr[-2000:]
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "models/sanbox/editor does not exist" in err[0] and "models/sandbox/editor" in err[0], err
    assert "Traceback" not in p.stderr
    assert os.listdir(tmp_path) == [] and set(os.listdir(os.path.join(ROOT, "models"))) == before
    print(f"typo'd editor path failed in {secs:.1f}s")


def test_missing_data_path_is_never_built_beside_the_typo(tmp_path, sandbox_dir, tiny_models):
    from edit_rlhf.config import GRPOConfig, load_config
    from edit_rlhf.paths import PathError, buildable_data, buildable_models
    from edit_rlhf.pipelines.grpo import prepare_inputs

    cfg = load_config(GRPOConfig, TINY, [f"editor.path={tiny_models['editor']}", "prepare.build_missing=true",
                                         f"data.train={sandbox_dir}/prompts_trian", "data.eval=null"])
    with pytest.raises(PathError, match=r"prompts_trian does not exist \(closest existing path: .*prompts_train\)"):
        prepare_inputs(cfg)
    assert not os.path.exists(f"{sandbox_dir}/prompts_trian")
    cfg.data.train, cfg.editor.path = f"{sandbox_dir}/prompts_train", f"{tmp_path}/nowhere/tiny/editor"
    with pytest.raises(PathError, match="tiny random models are built only at.*prepare.check_paths=false"):
        prepare_inputs(cfg)
    assert os.listdir(tmp_path) == []
    # inputs that exist only on a cluster's worker nodes: the driver's check can be turned off, nothing is built
    cfg.prepare.check_paths = False
    prepare_inputs(cfg)
    assert os.listdir(tmp_path) == []
    assert buildable_models(".cache/tiny_models/editor") and buildable_data(".cache/sandbox/prompts_eval")
    assert not buildable_models("models/sandbox/editor") and not buildable_data("data/sandbox/prompts_eval")


# --------------------------------------------------------------------------- run store
def _new_store(d, q):
    try:
        from edit_rlhf.tracking import Tracker

        t = Tracker(d, "concurrent")
        t.finish()
        q.put("ok")
    except Exception as e:  # reported, not raised: the parent counts the failures
        q.put(f"{type(e).__name__}: {str(e)[:300]}")


@pytest.mark.integration
def test_concurrent_first_starts_on_one_new_store_all_succeed(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for trial in range(3):
        q = ctx.Queue()
        ps = [ctx.Process(target=_new_store, args=(str(tmp_path / f"store{trial}"), q)) for _ in range(3)]
        for p in ps:
            p.start()
        for p in ps:
            p.join(timeout=300)
        assert [q.get(timeout=10) for _ in ps] == ["ok"] * 3, trial


def test_half_migrated_store_gives_one_line_and_repair_fixes_it(tmp_path):
    from edit_rlhf.store import StoreError, repair
    from edit_rlhf.tracking import Tracker

    d = str(tmp_path / "mlruns")
    Tracker(d, "x").finish()
    con = sqlite3.connect(os.path.join(d, "mlflow.db"))
    con.execute("CREATE TABLE _alembic_tmp_metrics (id INTEGER)")  # what a migration killed half-way leaves
    con.commit()
    con.close()
    with pytest.raises(StoreError) as e:
        Tracker(d, "x")
    assert f"edit-rlhf repair-store {d}" in str(e.value) and "\n" not in str(e.value)
    rep = repair(d)
    assert rep["dropped_tables"] == ["_alembic_tmp_metrics"] and os.path.exists(rep["backup"])
    Tracker(d, "x").finish()


# --------------------------------------------------------------------------- clean stops, one-line errors
def test_checkpoint_error_is_one_line_without_traceback(tmp_path, capsys):
    from edit_rlhf.cli import main

    rc = main(["grpo", "--config", TINY, f"output_dir={tmp_path}/none", "--resume", "--print-config"])
    assert rc == 0  # --print-config never touches checkpoints
    os.makedirs(tmp_path / "ck" / "checkpoints")
    (tmp_path / "ck" / "checkpoints" / "latest").write_text("step_00000007\n")
    rc = main(["grpo", "--config", TINY, f"output_dir={tmp_path}/ck", f"tracking.dir={tmp_path}/mlruns", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "CheckpointError" in err[0] and "step_00000007" in err[0], err


def _ray_processes(marker: str):
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_stops_cleanly_killed_run_resume_line_no_ray_left(tiny_models, sandbox_dir, tmp_path, signum):
    from mlflow.tracking import MlflowClient

    from edit_rlhf.checkpoint import Checkpoints, load_state

    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    args = [sys.executable, "-m", "edit_rlhf", "grpo", "--config", TINY, "--quiet",
            f"editor.path={tiny_models['editor']}", f"data.train={sandbox_dir}/prompts_train", "data.eval=null",
            f"output_dir={tmp_path}/out", f"tracking.dir={tmp_path}/mlruns", "steps=50", "save_every=1",
            "prepare.build_missing=false", "algo.prompts_per_step=2", "algo.group_size=4", "cluster.num_cpus=8",
            "sampling.num_steps=4", "sampling.train_timesteps=3", "sampling.sde_steps=0"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp)
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = tmp_path / "out" / "checkpoints" / "latest"
    t0 = time.time()
    while not latest.exists() and p.poll() is None and time.time() - t0 < 400:
        time.sleep(0.5)
    assert latest.exists(), p.communicate(timeout=60)
    p.send_signal(signum)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 128 + int(signum), err[-3000:]
    assert "Resume with: edit-rlhf grpo" in err and "--resume" in err and "Traceback" not in err, err[-3000:]
    ck = Checkpoints(f"{tmp_path}/out")
    st = load_state(ck.latest())
    assert not [n for n in os.listdir(ck.root) if n.startswith(".tmp")]
    run = MlflowClient("sqlite:///" + f"{tmp_path}/mlruns/mlflow.db").get_run(st["mlflow_run_id"])
    assert run.info.status == "KILLED"
    t0 = time.time()
    while _ray_processes(ray_tmp) and time.time() - t0 < 30:
        time.sleep(1)
    assert _ray_processes(ray_tmp) == []
    shutil.rmtree(ray_tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the RRM verdict parser
def test_verdict_parser_is_linear_in_its_input():
    import random
    import re

    from edit_rlhf.rrm.parse import parse_verdict, score_tags

    old = re.compile(r"<\s*score\s*>(.*?)<\s*[/\\]\s*score\s*>", re.I | re.S)  # the quadratic regex it replaces
    rng = random.Random(0)
    pieces = ["<score>", "</score>", "< SCORE >", "<\\score>", "5", " ", "x", "<", ">", "score", "\n"]
    for _ in range(3000):  # the same tags as that regex found
        t = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert [(m.start(), m.group(1)) for m in old.finditer(t)] == [(x.start, x.body) for x in score_tags(t)], t
    reply = ("<score>" * 20000)[:140_000]
    best = min(_timed(parse_verdict, reply) for _ in range(3))
    assert parse_verdict(reply).reason.startswith("<score> tag is not closed") and best < 0.05, best
    for reply in ("{" * 140_000 + "<score>5</score>", "[{" * 70_000 + "<score>5</score>"):  # unterminated brackets
        assert min(_timed(parse_verdict, reply) for _ in range(2)) < 2.0
        assert not parse_verdict(reply).ok


def _timed(fn, *a):
    t = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t


# --------------------------------------------------------------------------- data errors
@pytest.mark.integration
def test_corrupt_row_under_schema_validation_is_a_data_error_not_retried(ray_cluster, grpo_cfg, sandbox_dir, tmp_path):
    import datasets

    from edit_rlhf.data.prompts import DatasetError
    from edit_rlhf.pipelines.grpo import GRPOTrainer

    ds = datasets.load_from_disk(f"{sandbox_dir}/prompts_train")
    ds = ds.cast_column("source_image", datasets.Image(decode=False))
    rows = ds.to_list()
    for r in rows:  # every row corrupt: the first step meets one whatever the sampler draws
        r["source_image"] = {"bytes": b"\x89PNG\r\n\x1a\n not really a png", "path": None}
    datasets.Dataset.from_list(rows, features=ds.features).save_to_disk(str(tmp_path / "bad"))
    tr = GRPOTrainer(grpo_cfg(f"data.train={tmp_path}/bad", "data.validate=schema", "data.eval=null", "steps=1",
                              "save_every=0", "eval_every=0", "rollout.size=2"), quiet=True)
    t = time.time()
    with pytest.raises(DatasetError) as e:
        tr.run()
    assert "source_image" in str(e.value) and "failed to generate" not in str(e.value)
    assert sum(tr.rollout.served) == 0 if hasattr(tr, "rollout") else True
    print(f"corrupt row under validate=schema: DatasetError after {time.time() - t:.1f}s")


def test_submit_dry_run_line_works_on_a_token_auth_cluster(monkeypatch, tmp_path, capsys):
    from edit_rlhf.cluster.submit import submit

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 32)
    assert submit(["--", "grpo", "--config", TINY], "http://10.0.0.1:8265", dry_run=True) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("RAY_AUTH_MODE=token ray job submit --address http://10.0.0.1:8265") and "t" * 32 not in line
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    submit(["--", "grpo", "--config", TINY], "http://10.0.0.1:8265", dry_run=True)
    assert capsys.readouterr().out.startswith("ray job submit")


def _kill_matching(marker: str) -> None:
    """Stop only the processes of this test's Ray (`ray stop` would stop every Ray cluster on the machine)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and any(marker in a for a in (p.info["cmdline"] or [])):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@pytest.mark.integration
def test_local_run_beside_a_ray_start_cluster_starts_its_own_with_one_line():
    import tempfile

    from edit_rlhf.ports import free_port

    rt = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(RAY_TMPDIR=rt, RAY_AUTH_MODE="disabled")
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    try:
        r = subprocess.run([ray_bin, "start", "--head", f"--port={free_port()}", "--num-cpus=1",
                            "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
                            f"--dashboard-agent-listen-port={free_port()}",
                            f"--dashboard-agent-grpc-port={free_port()}",
                            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"],
                           env=env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr[-2000:]
        code = ("import ray; from edit_rlhf.cluster.pools import init_ray; from edit_rlhf.config.schema import "
                "ClusterConfig; init_ray(ClusterConfig(num_cpus=2)); print('cpus', ray.cluster_resources()['CPU']); "
                "ray.shutdown()")
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "cpus 2.0" in p.stdout  # its own local cluster, not the 1-CPU one started above
        lines = [x for x in p.stdout.splitlines() if "already running" in x]
        assert len(lines) == 1 and "cluster.address=auto" in lines[0], p.stdout
    finally:
        _kill_matching(rt)
        shutil.rmtree(rt, ignore_errors=True)


def test_random_fault_rates_kill_at_the_site_and_log_it(tmp_path):
    log = tmp_path / "faults.log"
    env = dict(os.environ, EDIT_RLHF_FAULT_RATES="score=0,step=1", EDIT_RLHF_FAULT_LOG=str(log))
    code = ("from edit_rlhf.faults import maybe_fail; maybe_fail('reward-0', 'score'); maybe_fail('driver', 'step'); "
            "print('alive')")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 17 and "alive" not in p.stdout and log.read_text() == "driver step 1\n"


def test_settings_beside_secrets_are_not_scrubbed_from_other_text():
    from edit_rlhf import redaction as r

    r.register_config({"cluster": {"actor_env": {"RAY_AUTH_MODE": "disabled", "HF_HOME": "/data/hf_cache",
                                                 "OMP_NUM_THREADS": "1"}}})
    text = "auth disabled, cache /data/hf_cache, 1 thread"
    assert r.scrub_str(text) == text
    assert r.scrub({"actor_env": {"RAY_AUTH_MODE": "disabled"}}) == {"actor_env": {"RAY_AUTH_MODE": "***"}}


def test_a_second_stop_signal_does_not_cut_the_clean_up_short():
    from edit_rlhf import stops

    prev = stops.install()
    try:
        with pytest.raises(stops.Stopped):
            stops._handler(signal.SIGINT, None)
        stops._handler(signal.SIGINT, None)  # pressed again while the pools shut down: no second Stopped
        assert stops.stopped_by() == signal.SIGINT and stops.stop_status("FAILED") == "KILLED"
    finally:
        stops.uninstall(prev)
        stops._STATE.update(signal=None, pending=None)


def test_no_closest_path_guessed_at_the_filesystem_root():
    from edit_rlhf.paths import closest, missing

    assert closest("/nope_edit_rlhf/editor") is None
    assert "closest existing path" not in str(missing("editor.path", "/nope_edit_rlhf/editor"))
    assert closest(os.path.join(ROOT, "models", "sanbox", "editor")) == os.path.join(ROOT, "models", "sandbox", "editor")
