"""Entry points and their glue: ``mrl-train`` / ``mrl-eval`` / ``python -m mrl train|eval``
(:func:`train_main`, :func:`eval_main`; the root ``train.py`` / ``eval.py`` call the same), the
config resolvers, and one-line errors: every bad input ends in ``error: <message>`` and exit
status 2.

The configs ship inside the package (``mrl/conf``; the repository's ``conf/`` is that folder),
so the commands work from any directory; ``--config-dir <dir>`` adds a user's own groups and
options (e.g. ``<dir>/experiment/mine.yaml``, then ``experiment=mine``).

Covered: :class:`~mrl.core.errors.MRLError` (bad values found by the code), Hydra's own errors
(an unknown config group option such as ``data=nope`` or ``eval=[nope]``, an unknown key, an
override that does not parse), OmegaConf errors (a mandatory ``???`` value left unset), Lightning
``MisconfigurationException`` and ``OSError`` with a file name (an unwritable or impossible run
dir such as ``hydra.run.dir=/some/file.txt/run``). Anything else is a bug and keeps Hydra's
report with a traceback. ``HYDRA_FULL_ERROR=1`` shows the full traceback for everything.

How: :func:`one_line_errors` wraps the task function (errors raised inside a run); decorating
also swaps Hydra's ``run_and_report`` (``hydra._internal.utils``, which prints composition and
run-dir errors over several lines before the task starts) for :func:`_run_and_report`, which
prints one line for the errors above and defers to Hydra's for the rest.

A run stopped by SIGTERM (a scheduler, ``kill``) prints one line saying where it stopped and
how to resume, and exits with status 143 (:class:`~mrl.core.errors.Terminated`).

Multirun: a failing job is recorded (``status: failed`` in its run dir's ``run.json``, written
by the task) and Hydra goes on with the other jobs; at the end the sweep exits with status 2 and
one line naming every failed job, e.g. ``error: 1 of 2 multirun jobs failed (see run.json in
each job dir): job 0 [optim.lr=-1]: optim.lr=-1 must be a positive number``.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mrl.core.errors import MRLError

#: Outcomes of the multirun jobs run in this process: ``{"num", "overrides", "error"}``.
SWEEP_JOBS: list[dict[str, Any]] = []

_DROP_LINE = re.compile(
    r"^\s*(full_key:|object_type=|reference_type=|Config search path|provider=|"
    r"Set the environment variable HYDRA_FULL_ERROR|See https://hydra\.cc)"
)


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(text: str) -> str:
    """Join a multi-line message into one line (drops Hydra's search-path / key-dump lines)."""
    lines = [ln.strip() for ln in str(text).splitlines()]
    lines = [ln for ln in lines if ln and not _DROP_LINE.match(ln)]
    out = ""
    for ln in lines:
        out = f"{out}{'' if not out else ' ' if out.endswith(('.', ':', ';')) else '; '}{ln}"
    return out


def _group_options(group: str) -> list[str]:
    try:
        from hydra.core.global_hydra import GlobalHydra

        gh = GlobalHydra.instance()
        if gh.is_initialized():
            return sorted(gh.config_loader().get_group_options(group))
    except Exception:  # noqa: BLE001
        pass
    return []


def _missing_config_message(exc: Exception) -> str:
    text = str(exc)
    m = re.search(r"Could not (?:find|load) '([^']+)'", text)
    if not m or "/" not in m.group(1):
        return one_line(text)
    group, _, name = m.group(1).rpartition("/")
    options = list(getattr(exc, "options", None) or []) or _group_options(group)
    valid = f"choose one of {', '.join(options)}" if options else f"see conf/{group}/"
    return f"'{name}' is not a config in group '{group}' (no {group}/{name}.yaml); {valid}"


def _os_message(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else "?"
    what = exc.strerror or type(exc).__name__
    hint = {
        errno.ENOTDIR: "a part of that path is a file, not a folder",
        errno.EACCES: "it is not writable",
        errno.EPERM: "it is not writable",
        errno.EROFS: "the filesystem is read-only",
        errno.ENOSPC: "the disk is full",
        errno.EEXIST: "a file is in the way",
    }.get(exc.errno or 0)
    fix = "give a writable folder (hydra.run.dir=..., hydra.sweep.dir=... or paths.log_dir=...)"
    return f"cannot use {where}: {what}" + (f" ({hint})" if hint else "") + f"; {fix}"


def user_message(exc: BaseException) -> str | None:
    """The one-line message for a user error (bad input or environment), None for a bug."""
    if isinstance(exc, MRLError):
        return str(exc)
    try:
        from hydra.errors import HydraException, MissingConfigException
    except ImportError:  # pragma: no cover
        HydraException = MissingConfigException = ()  # type: ignore[assignment]
    if MissingConfigException and isinstance(exc, MissingConfigException):
        return _missing_config_message(exc)
    if getattr(exc, "override", None) and HydraException and isinstance(exc, HydraException):
        return (
            f"cannot parse the override {exc.override!r}: {one_line(str(exc))}; write "  # type: ignore[attr-defined]
            "key=value, lists as key=[a,b]; quote the whole argument for the shell and a value "
            "with spaces or special characters for Hydra: 'data.root=\"/path with space\"'"
        )
    if HydraException and isinstance(exc, HydraException):
        cur: BaseException | None = exc  # an MRLError wrapped by hydra.utils.instantiate
        seen: set[int] = set()  # exception chains can loop (a context pointing back)
        while cur is not None and id(cur) not in seen:
            if isinstance(cur, MRLError):
                return str(cur)
            seen.add(id(cur))
            cur = cur.__cause__ or cur.__context__
        cause = exc.__cause__
        extra = f"; {cause}" if cause is not None and str(cause) not in str(exc) else ""
        return one_line(f"{exc}{extra}")
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    if isinstance(exc, MissingMandatoryValue):
        key = getattr(exc, "full_key", None) or "a value"
        return f"{key} is required ('???' in the config); set it, e.g. {key}=<value>"
    if isinstance(exc, OmegaConfBaseException):
        return one_line(str(exc))
    if isinstance(exc, OSError) and exc.filename is not None:
        return _os_message(exc)
    if _raised_in(exc, "submitit"):  # e.g. hydra/launcher=slurm where there is no SLURM
        return (
            f"the submitit launcher failed: {one_line(str(exc))}; on a machine without SLURM try "
            "the sweep with hydra/launcher=submitit_local"
        )
    try:
        from lightning_fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, MisconfigurationException):
        return one_line(str(exc))
    return None


def _raised_in(exc: BaseException, package: str) -> bool:
    """True when ``exc`` was raised inside ``package`` (its innermost frame's file)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename


def _sweep_message(exc: BaseException) -> str | None:
    """All failed jobs of an in-process multirun in one line (None: no failure recorded)."""
    failed = [j for j in SWEEP_JOBS if j.get("error")]
    if not failed:
        return None
    # show what varies between the jobs, not the overrides they all share
    common = set.intersection(*(set(j["overrides"]) for j in SWEEP_JOBS))
    if len(SWEEP_JOBS) < 2:
        common = set()

    def own(j: dict[str, Any]) -> str:
        return " ".join(o for o in j["overrides"] if o not in common) or "no overrides"

    parts = [f"job {j['num']} [{own(j)}]: {j['error']}" for j in failed]
    return (
        f"{len(failed)} of {len(SWEEP_JOBS)} multirun jobs failed (see run.json in each job "
        f"dir): " + " | ".join(parts)
    )


def _job_context() -> tuple[bool, int | None, list[str]]:
    """(multirun?, job number, the job's overrides)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return hc.mode == RunMode.MULTIRUN, hc.job.get("num"), list(hc.overrides.task)
    except Exception:  # noqa: BLE001
        return False, None, []


def _is_multirun() -> bool:
    return _job_context()[0]


def _die(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _reraise(exc: BaseException) -> Any:
    raise exc


def _run_and_report_factory(original: Callable[[Callable[[], Any]], Any]):
    def _run_and_report(func: Callable[[], Any]) -> Any:
        try:
            return func()
        except Exception as ex:  # noqa: BLE001
            message = None if _full_error() else user_message(ex)
            if message is not None and SWEEP_JOBS:
                message = _sweep_message(ex) or message
            if message is None:
                return original(functools.partial(_reraise, ex))
            _die(message)

    _run_and_report.mrl_one_line = True  # type: ignore[attr-defined]
    return _run_and_report


def install_hydra_error_hook() -> bool:
    """Make Hydra's own error reports (composition, run dir) one line; True when installed."""
    try:
        from hydra._internal import utils as hydra_utils
    except ImportError:  # pragma: no cover
        return False
    current = getattr(hydra_utils, "run_and_report", None)
    if current is None:  # pragma: no cover - another Hydra version: keep its reports
        return False
    if not getattr(current, "mrl_one_line", False):
        hydra_utils.run_and_report = _run_and_report_factory(current)
    return True


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a Hydra task: user errors -> ``error: <one line>`` on stderr, exit status 2.

    Put it under ``@hydra.main``. In a multirun the error is recorded and re-raised, so Hydra
    marks that job failed and runs the others (the sweep then exits 2 with one line).
    """
    install_hydra_error_hook()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        multirun, num, overrides = _job_context()
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            message = user_message(e)
            if multirun:
                error = message or one_line(f"{type(e).__name__}: {e}")
                SWEEP_JOBS.append({"num": num, "overrides": overrides, "error": error[:300]})
                raise
            if message is None or _full_error():
                raise
            _die(message, getattr(e, "exit_code", 2))
        if multirun:
            SWEEP_JOBS.append({"num": num, "overrides": overrides, "error": None})
        return result

    return wrapper


# ----------------------------------------------------------------------------- resolvers
_RUN_ID = secrets.token_hex(3)


def _wandb_offline() -> bool:
    """True when W&B has no credentials (no WANDB_API_KEY, no netrc entry) or WANDB_MODE says so."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return True
    if mode == "online":
        return False
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" not in netrc.read_text()
    except OSError:
        return True


def register_resolvers() -> None:
    """``${run_id:}`` (random per process), ``${cwd:}`` (the working directory, also before a
    sweep starts, where ``${hydra:runtime.cwd}`` is not set yet), ``${wandb_offline:}``."""
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: _RUN_ID)
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", _wandb_offline)


# ----------------------------------------------------------------------------- entry points
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


def _run(config_name: str, task: Callable[[Any], Any]) -> None:
    import hydra

    register_resolvers()
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(
        one_line_errors(task)
    )()


def _train(cfg: Any) -> float | None:
    from mrl.tasks.train import train

    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric") or "", None)  # for sweepers


def _evaluate(cfg: Any) -> None:
    from mrl.tasks.evaluate import eval_task

    eval_task(cfg)


def train_main() -> None:
    """``mrl-train [overrides]``: train (``conf/train.yaml``), as ``python train.py``."""
    _run("train", _train)


def eval_main() -> None:
    """``mrl-eval [overrides]``: evaluate (``conf/eval.yaml``), as ``python eval.py``."""
    _run("eval", _evaluate)
