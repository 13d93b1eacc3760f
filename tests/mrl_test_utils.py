"""Helpers for tests: compose the real Hydra configs, run the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_cfg(config_name: str, out_dir: Path, *overrides: str) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the CLI would, with the run dir at ``out_dir``."""
    from mrl.cli import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(
            config_name,
            overrides=[f"paths.output_dir={out_dir}", f"paths.root_dir={ROOT}", *overrides],
        )


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 600):
    """Run ``python <args>`` from the repo root; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Runs entry-point scripts (train.py, eval.py) one after another in ONE Python process, each
# as ``python <script> <args>`` would (``runpy`` as ``__main__``, a fresh Hydra, its own argv and
# environment), catching its ``SystemExit`` and capturing its stdout and stderr: a new
# interpreter per case costs ~10 s of imports on 2 cores.
_DRIVER = r"""
import contextlib, io, json, os, runpy, sys, time, traceback
from hydra.core.global_hydra import GlobalHydra
cases_file, out_file = sys.argv[1], sys.argv[2]
cases = json.load(open(cases_file))
results = {}
for name, script, args, env, *keep in cases:
    GlobalHydra.instance().clear()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    if "mrl.cli" in sys.modules:
        sys.modules["mrl.cli"].SWEEP_JOBS.clear()
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [script, *args]
    code = 0
    t = time.time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # uncaught: what the interpreter would print
            traceback.print_exc()
            code = 1
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    results[name] = {
        "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
        "seconds": round(time.time() - t, 1),
        "files": {f: open(f).read() for f in (keep[0] if keep else []) if os.path.isfile(f)},
    }
json.dump(results, open(out_file, "w"))
"""


def run_cli_cases(cases: list[tuple], tmp: Path, timeout: int = 900) -> dict[str, dict]:
    """Run ``(name, script, args, env[, files])`` cases through the real entry-point scripts,
    in order, all in one subprocess (see ``_DRIVER``); returns
    ``{name: {"code", "stdout", "stderr", "seconds", "files"}}`` where ``code`` is the exit
    status ``python <script> <args>`` would have and ``files`` maps each path of ``files``
    that exists right after the case to its text (read before the next case runs)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cases = [[*c[:4], [str(f) for f in c[4]]] if len(c) > 4 else list(c) for c in cases]
    (tmp / "cases.json").write_text(json.dumps(cases))
    r = run_cli("-c", _DRIVER, str(tmp / "cases.json"), str(tmp / "out.json"), timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


def wait_for_file(proc, pattern: str, folder: Path, log: Path, timeout: float = 400) -> Path:
    """Poll until a file matching ``folder.glob(pattern)`` exists while ``proc`` (a Popen whose
    output goes to ``log``) keeps running; returns the file. Fails naming the log's tail if the
    process exits first or nothing appears within ``timeout`` seconds."""
    import time

    deadline = time.time() + timeout
    while not (found := sorted(Path(folder).glob(pattern))):
        assert proc.poll() is None, Path(log).read_text()[-3000:]
        assert time.time() < deadline, f"no {pattern} under {folder} after {timeout} s"
        time.sleep(0.05)
    return found[0]


def assert_scaled_lr_groups(module, scaled, scale: float) -> list[dict]:
    """``module.configure_optimizers()``'s groups: the ``scaled`` parameters' groups start at
    ``lr * scale``, every other group at ``lr``, no group mixes the two, every parameter is in
    exactly one group and both kinds exist. Returns the param groups (for further checks)."""
    from types import SimpleNamespace

    import pytest

    scaled = {id(p) for p in scaled}
    module._trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=1)
    try:
        groups = module.configure_optimizers()["optimizer"].param_groups
    finally:
        module._trainer = None
    lr, seen, kinds = module.optim_cfg["lr"], [], set()
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= scaled or not ids & scaled, "a group mixes scaled and unscaled parameters"
        assert g["initial_lr"] == pytest.approx(lr * (scale if ids <= scaled else 1))
        kinds.add(ids <= scaled)
        seen += list(ids)
    assert sorted(seen) == sorted(id(p) for p in module.parameters())
    assert kinds == {True, False}
    return groups
