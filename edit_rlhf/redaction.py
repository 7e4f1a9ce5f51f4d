"""Secrets never leave memory: redaction of configs, states and reports before anything is written.

Two rules, applied together by `scrub` (nested dicts/lists/strings) and `redact_flat` (flattened params):

- By key name: a key whose words (split on `_ . - /`, spaces and camelCase) include one of `SECRET_WORDS`
  (token, secret, password, key, credential, auth, ...) holds a secret: `HF_TOKEN`, `AWS_ACCESS_KEY_ID`,
  `WANDB_API_KEY`, `db_password`, `clientSecret`. Its string value becomes `***`.
- By value: every value of an environment-like map (`cluster.actor_env`, `env_vars`, `env`, ...) is treated
  as secret-bearing whatever its key, and every secret value seen (in a loaded config, or in this process's
  environment under a secret-looking name) is also replaced wherever it appears inside another string
  (a dotted override `cluster.actor_env.HF_TOKEN=...` in a stage record, a command line in a tag).

`load_config` registers the secrets of every config it loads, so any writer that calls `scrub` is covered.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Iterable, Set

MASK = "***"
SECRET_WORDS = {"token", "secret", "secrets", "password", "passwd", "passphrase", "key", "apikey",
                "credential", "credentials", "auth", "authorization", "api", "private", "cookie", "signature",
                "sas", "bearer"}
# maps whose values are environment variables: every value is treated as a secret, whatever its name
ENV_MAPS = {"actor_env", "env_vars", "env", "environ", "environment", "extra_env"}
MIN_SCRUB_LEN = 6  # shorter secret values are masked where they stand but not searched for inside other strings

_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_SPLIT = re.compile(r"[^A-Za-z0-9]+")
_SECRETS: Set[str] = set()


def words(key: str) -> list:
    """'AWS_ACCESS_KEY_ID' -> ['aws', 'access', 'key', 'id']; 'clientSecret' -> ['client', 'secret']."""
    return [w.lower() for w in _SPLIT.split(_CAMEL.sub(r"\1_\2", str(key))) if w]


def is_secret_key(key: str) -> bool:
    return any(w in SECRET_WORDS for w in words(key))


def is_env_map(key: str) -> bool:
    return str(key).lower() in ENV_MAPS


def register(values: Iterable[Any], strict: bool = False) -> None:
    """Remember secret values so that `scrub` removes them from any string (process-wide). `strict`: only
    values that look like credentials (`looks_like_secret`), for sources where settings sit beside secrets."""
    for v in values:
        if (isinstance(v, str) and len(v) >= MIN_SCRUB_LEN and not looks_like_setting(v)
                and (not strict or looks_like_secret(v))):
            _SECRETS.add(v)


_SETTINGS = {"disabled", "enabled", "token", "true", "false", "none", "null", "auto", "default", "required",
             "optional", "bearer", "basic"}


def looks_like_setting(v: str) -> bool:
    """A mode word or a path (RAY_AUTH_MODE=disabled, PWD=/work): never searched for inside other text."""
    v = v.strip()
    return v.lower() in _SETTINGS or v.startswith(("/", "~", "./", "../")) or os.path.exists(v)


def looks_like_secret(v: str) -> bool:
    """A credential-like string: long, or with letters and digits mixed. Settings such as RAY_AUTH_MODE=disabled,
    OMP_NUM_THREADS=1 or HF_HOME=/data/hf are masked where they stand but not searched for in other text."""
    v = v.strip()
    return len(v) >= 8 and (len(v) >= 24 and " " not in v and "/" not in v
                            or (any(c.isdigit() for c in v) and any(c.isalpha() for c in v)))


def secret_values(obj: Any, in_env: bool = False, named_only: bool = False) -> list:
    """Every value of `obj` (nested dicts / lists / config dataclasses) under a secret-looking key or (unless
    `named_only`) in an environment-like map."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            secret = (in_env and not named_only) or is_secret_key(k)
            if isinstance(v, (dict, list, tuple)) or dataclasses.is_dataclass(v):
                out += secret_values(v, in_env or is_env_map(k), named_only)
            elif secret and isinstance(v, str) and v:
                out.append(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += secret_values(v, in_env, named_only)
    return out


def register_config(cfg: Any) -> None:
    """Secrets of a config: values under secret-looking keys, and credential-like values of environment maps."""
    register(secret_values(cfg, named_only=True))
    register(secret_values(cfg), strict=True)


def register_environ(environ: Dict[str, str] = os.environ) -> None:
    """This process's own secret-looking environment variables (HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...)."""
    register((v for k, v in environ.items() if is_secret_key(k)), strict=True)


def scrub_str(s: str) -> str:
    for v in sorted(_SECRETS, key=len, reverse=True):
        if v in s:
            s = s.replace(v, MASK)
    return s


def scrub(obj: Any, in_env: bool = False) -> Any:
    """A copy of `obj` (nested dict / list / str) with secrets masked; other values unchanged."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(v, (dict, list, tuple)):
                out[k] = scrub(v, in_env or is_env_map(k))
            elif isinstance(v, str) and v and (in_env or is_secret_key(k)):
                out[k] = MASK
            else:
                out[k] = scrub(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [scrub(v, in_env) for v in obj]
    if isinstance(obj, str):
        return MASK if (in_env and obj) else scrub_str(obj)
    return obj


def redact_flat(params: Dict[str, Any]) -> Dict[str, Any]:
    """Flattened params ('cluster.actor_env.HF_TOKEN' -> value): masked by the last key's name, by an
    environment-like map anywhere above it, and by value."""
    out = {}
    for k, v in params.items():
        parts = str(k).split(".")
        secret = is_secret_key(parts[-1]) or any(is_env_map(p) for p in parts[:-1])
        if secret and v not in (None, "") and not isinstance(v, (bool, int, float)):
            out[k] = MASK
        else:
            out[k] = scrub_str(v) if isinstance(v, str) else v
    return out


def redacted_config(cfg: Any) -> Dict[str, Any]:
    """The config as a plain dict with its secrets masked (what every writer of a config uses). OmegaConf
    directly, as `edit_rlhf.config.to_dict` does: the config package imports this module, not the reverse."""
    from omegaconf import OmegaConf

    register_config(cfg)
    return scrub(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))


register_environ()
