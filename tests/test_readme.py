"""The README is executable: every command in its code blocks runs as written.

Commands run in order in a temporary working copy (``train.py``, ``eval.py``; the configs ship
inside the package), with
only size-limiting overrides appended (a few batches of a small subset; 2 Optuna trials).
Placeholders are the runs made by earlier commands: ``<run dir>``, ``<ckpt>`` and
``logs/train/runs/<run>`` name the first plain ``python train.py`` run, ``logs/eval/runs/<run>``
the first evaluation. A command that needs a cluster is checked by composing its config
(Hydra's compose); the make targets that take minutes (the main job, the test suite itself,
the benchmarks) and the GPU script are listed as such, so a new README command must be
classified here before it can pass. Composing uses Hydra's compose API: ``--cfg`` cannot be
combined with ``-m``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest

from mrl_test_utils import ROOT, run_cli

# a few minutes of CLI runs: `make test-readme` (and .ci/run) runs it, `make test` does not
pytestmark = pytest.mark.readme

TRAIN_LIMITS = [
    "data.subset=160",
    "data.val_size=32",
    "data.test_subset=32",
    "data.batch_size=16",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]
EVAL_LIMITS = ["data_overrides.test_subset=200"]
DEFAULT_EVAL_LIMITS = [
    "eval.adaptive_ret.shortlist_k=64",
    "eval.fewshot.episodes=20",
    "eval.fewshot.queries_per_class=5",
]
#: cannot run here: (fragment of the command, why)
NOT_RUN = {
    "make reproduce-table1": "the main job (about 10 minutes): run by CI-like checks, not tests",
    "make test": "the test suite itself",
    "make bench": "benchmarks take minutes (make bench-quick: about 1 minute)",
    "bash scripts/gpu_bench.sh": "needs a GPU",
}
#: needs a cluster: composed only, with what the composed config must show
COMPOSE_ONLY = {
    "hydra/launcher=slurm": {
        "nodes": 2,
        "tasks_per_node": 8,
        "gpus_per_node": 8,
        "partition": "gpu",
    }
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [ln.strip() for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _first(folder: Path) -> Path:
    """The earliest run in ``folder`` (run dirs are named by their start time)."""
    runs = sorted(p for p in folder.iterdir() if p.is_dir())
    assert runs, f"no run in {folder}"
    return runs[0]


def _drop_checkpoints(logs: Path, keep: Path) -> None:
    """Deletes the checkpoints of every training run but ``keep`` (the one the placeholders
    name) once its command has passed: the runs hold 170 MB (ResNet-18) to 1.3 GB (ViT-B/16)
    each, and kept together they filled a CI disk."""
    for ckpt in (logs / "train").glob("**/*.ckpt"):
        if keep not in ckpt.parents:
            ckpt.unlink()


def test_readme_commands_run_as_written(tmp_path):  # about 5 minutes on 2 cores
    work = tmp_path / "work"
    work.mkdir()
    for name in ("train.py", "eval.py"):
        shutil.copy(ROOT / name, work / name)
    data = tmp_path / "data"  # CIFAR-10 for data=cifar10 (torchvision cannot download here)
    sys.path.insert(0, str(ROOT / "tests" / "data"))
    from mrl_data_helpers import make_cifar

    make_cifar(data / "cifar", "cifar10", 200, 40)
    env = {"MRL_DATA_DIR": str(data), "WANDB_MODE": "offline"}

    ran, composed, skipped = [], [], []
    for line in readme_commands():
        reason = next((why for frag, why in NOT_RUN.items() if line.startswith(frag)), None)
        if reason:
            skipped.append(line)
            continue
        train_runs = work / "logs" / "train" / "runs"
        subst = {"<partition>": "gpu"}
        if train_runs.is_dir():
            first = _first(train_runs)
            subst |= {
                "<run dir>": str(first),
                "<ckpt>": str(first / "checkpoints" / "last.ckpt"),
                "logs/train/runs/<run>": str(first),
            }
        if (work / "logs" / "eval" / "runs").is_dir():
            subst["logs/eval/runs/<run>"] = str(_first(work / "logs" / "eval" / "runs"))
        command = line
        for key, value in subst.items():
            command = command.replace(key, value)
        args = shlex.split(command, comments=True)
        assert args[0] == "python" and args[1] in ("train.py", "eval.py"), line
        cluster = next((k for k in COMPOSE_ONLY if k in line), None)
        if cluster:  # compose the command's config as the launcher would receive it
            from hydra import compose, initialize_config_dir

            from mrl.cli import CONF_DIR, register_resolvers

            register_resolvers()
            overrides = [a for a in args[2:] if a != "-m"]
            with initialize_config_dir(CONF_DIR, version_base="1.3"):
                cfg = compose("train", overrides=overrides, return_hydra_config=True)
            launcher = cfg.hydra.launcher
            for key, value in COMPOSE_ONLY[cluster].items():
                assert launcher[key] == value, (line, key, launcher[key])
            composed.append(line)
            continue
        assert not any("<" in a for a in args), f"unresolved placeholder in {line!r}: {args}"
        if args[1] == "train.py":
            extra = list(TRAIN_LIMITS)
            if "hparams_search=mrl_optuna" in args:
                extra += ["hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2"]
        else:
            extra = list(EVAL_LIMITS) * ("embeddings=" not in line)
            if not any(a.startswith("eval=") for a in args):
                extra += DEFAULT_EVAL_LIMITS
        t = time.time()
        r = run_cli(*args[1:], *extra, cwd=work, env=env, timeout=900)
        assert r.returncode == 0, (line, r.stdout[-1500:], r.stderr[-3000:])
        ran.append(line)
        print(f"{time.time() - t:6.1f} s  {line}")
        if train_runs.is_dir():
            _drop_checkpoints(work / "logs", keep=_first(train_runs))

    assert len(ran) >= 15 and len(composed) == 1, (ran, composed)
    assert len(skipped) == 6, skipped  # the 5 make commands and the GPU script above
    # what the commands made: runs, a 4-job sweep with its summary, evaluations
    (sweep,) = [
        p
        for p in (work / "logs" / "train" / "multiruns").iterdir()
        if len(list(p.glob("[0-9]*"))) == 4
    ]
    assert (sweep / "sweep_summary.md").is_file()
    evals = list((work / "logs" / "eval" / "runs").iterdir())  # the README's 5 eval.py runs
    assert len(evals) == 5 and all((e / "metrics.json").is_file() for e in evals)


@pytest.mark.parametrize("line", [c for c in readme_commands() if c.startswith("python")])
def test_readme_command_uses_no_hidden_keys(line):
    """What a user types: no '+' keys and no run-dir overrides beyond the resume example."""
    args = shlex.split(line, comments=True)
    assert not any(a.startswith("+") for a in args), line
    assert sum(a.startswith("hydra.sweep.dir=") for a in args) == 0, line
