"""The evaluation task (``eval.py``): a checkpoint or bare embeddings -> every prefix evaluated.

* ``ckpt_path=<ckpt>``: the model is rebuilt from the checkpoint (read with
  ``weights_only=True``), its training run's data config is read from ``<run>/.hydra``
  (unless ``data=...`` is given), every split is embedded once (cached in
  ``<run dir>/embeddings/``) and the evaluators run on the cached arrays. What the
  checkpoint holds decides how (:func:`checkpoint_kind`): an image classification model as
  above; a text model (``model=hf_text``, any objective) goes through the encoder door below
  as :class:`mrl.encoders.TrainedTextEncoder` (the metrics of ``encoder=sentence_transformers``
  on its ``mrl-export`` folder); an ``objective=image_text`` dual encoder gets its test
  split's :meth:`~mrl.objectives.image_text.ImageTextLitModule.evaluate` (cross-modal R@k,
  zero-shot, kNN per prefix; ``eval=`` and the cache do not apply). Anything else: one line.
* ``embeddings=<folder or .npz>``: the arrays are read (memory-mapped) and the same
  evaluators run on them; evaluators that need trained heads are refused.
* ``encoder=timm|sentence_transformers encoder.name=...`` with ``data=...``: a model not
  trained here (:mod:`mrl.encoders`) embeds every split once (cached in
  ``<run dir>/embeddings/`` like a checkpoint's); the default list then skips the evaluators
  that need trained heads, and on text data (WordNet) it is ``[text_retrieval]``; on text
  data of ``data.task=classification`` (glosses -> lexicographer classes) every split's glosses
  are embedded and the default list is the images' (kNN, linear probe, ...), few-shot dropped
  when the classes are too small for its episodes (:func:`_class_problems`).

All three produce one :class:`~mrl.eval.registry.EvalData`; everything after it is shared
(:func:`mrl.eval.pipeline.evaluate_arrays`). Conventions of each metric: :mod:`mrl.eval`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mrl.core.dims import auto_dims
from mrl.core.errors import MRLError
from mrl.core.validate import integer
from mrl.eval.cache import file_fingerprint, load_embeddings
from mrl.eval.pipeline import (
    embed_width,
    eval_dims,
    evaluate_arrays,
    evaluate_run,
    match_data,
)
from mrl.eval.registry import EvalData, build_evaluators, check_sizes
from mrl.eval.search import use_search_device
from mrl.objectives.classification import MRLLitModule
from mrl.run.checkpoints import read_checkpoint
from mrl.run.claim import RunDirClaim
from mrl.run.distributed import spawn
from mrl.run.layout import RunDir, run_dir_of
from mrl.run.record import read_record, run_record
from mrl.tasks.instantiate import (
    artifact_settings,
    close_wandb,
    eval_init_kwargs,
    instantiate,
    instantiate_all,
    link_to_training,
    log_run_artifacts,
    report_skipped,
    trained_by,
)

#: what ``eval.py ckpt_path=`` evaluates, by what a checkpoint holds (:func:`checkpoint_kind`)
SUPPORTED = (
    "image models of objective=classification (MRL, MRL-E, FF)",
    "objective=image_text dual encoders",
    "text models (model=hf_text) of any objective (contrastive, mlm, text classification)",
)


def read_training_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """A checkpoint written by ``train.py``, read with ``weights_only=True`` (a crafted or
    corrupt file, or one without hyper-parameters, is refused with a one-line MRLError)."""
    path = Path(ckpt_path).expanduser()
    ckpt = read_checkpoint(path, label=f"checkpoint {path}")
    if "state_dict" not in ckpt or not isinstance(ckpt.get("hyper_parameters"), dict):
        raise MRLError(f"checkpoint {path} is not an MRL training checkpoint (no hyper-parameters)")
    return ckpt


def _objective_of(ckpt: Path, unknown: list[str]) -> str:
    """The objective a checkpoint was trained with, as its run dir's config names it (else its
    hyper-parameters that objective=classification does not have)."""
    run = run_dir_of(ckpt)
    if run is not None:
        try:
            target = OmegaConf.load(run.hydra_config).objective._target_
        except Exception:  # noqa: BLE001 - an older or edited config: fall back to the keys
            target = None
        if target:
            return f"objective._target_={target}"
    return f"an objective with hyper-parameters {unknown[:3]} (not objective=classification's)"


def checkpoint_kind(raw: dict[str, Any], ckpt: str | Path) -> str:
    """What ``eval.py`` evaluates in a training checkpoint: ``text`` (a text model, any
    objective), ``image_text`` (a dual encoder) or ``image`` (an :class:`MRLLitModule`);
    anything else is a one-line MRLError naming the objective found and :data:`SUPPORTED`."""
    import inspect

    from mrl.export import is_text_hparams

    hp = raw["hyper_parameters"]
    if is_text_hparams(hp):
        return "text"
    if "text_model" in hp:
        return "image_text"
    params = inspect.signature(MRLLitModule.__init__).parameters
    unknown = sorted(set(hp) - set(params))
    if not unknown:
        lacking = [
            n for n, p in params.items() if n != "self" and p.default is p.empty and n not in hp
        ]
        if lacking:
            raise MRLError(
                f"checkpoint {ckpt} is not an MRL training checkpoint (its hyper-parameters "
                f"lack {lacking[:3]})"
            )
        return "image"
    raise MRLError(
        f"checkpoint {ckpt} was trained with {_objective_of(Path(ckpt), unknown)}, which "
        f"eval.py ckpt_path= cannot evaluate; it evaluates {'; '.join(SUPPORTED)}"
    )


def load_module(ckpt_path: str | Path) -> MRLLitModule:
    """Rebuild an :class:`MRLLitModule` from a checkpoint without executing pickled code
    (a crafted or corrupt file, or another objective's checkpoint, is refused with a one-line
    :class:`MRLError`)."""
    path = Path(ckpt_path).expanduser()
    return _image_module(read_training_checkpoint(path), path)


def _image_module(ckpt: dict[str, Any], path: Path) -> MRLLitModule:
    """:func:`load_module` of an already read checkpoint."""
    kind = checkpoint_kind(ckpt, path)
    if kind != "image":
        raise MRLError(
            f"checkpoint {path} holds a {kind.replace('_', '-')} model, not an image "
            "classification model; evaluate it with eval.py ckpt_path=<it>"
        )
    module = MRLLitModule(**ckpt["hyper_parameters"])
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise MRLError(
            f"checkpoint {path} does not match its config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return module.eval()


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec not in ("cpu", "cuda") and not str(spec).startswith("cuda:"):
        raise MRLError(f"device={spec!r}: use auto, cpu or cuda")
    if spec != "cpu" and not torch.cuda.is_available():
        raise MRLError(
            f"device={spec} but no CUDA GPU is visible here (torch.cuda.is_available() is "
            "False); use device=cpu or device=auto"
        )
    return torch.device(spec)


def _only_dims(cfg: DictConfig) -> list[int] | None:
    only = cfg.get("dims")
    if only is None:
        return None
    if isinstance(only, (str, int, float)):
        raise MRLError(f"dims={only!r} must be a list of prefix sizes, e.g. dims=[{only}]")
    return list(only)


def _evaluators_chosen() -> bool:
    """True when the command line chose the evaluators (``eval=[...]``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return any(o.split("=", 1)[0] == "eval" for o in HydraConfig.get().overrides.task)


def _data_config(cfg: DictConfig, ckpt: Path) -> dict[str, Any]:
    """``data=...`` if given, else the training run's; ``data_overrides`` applied on top."""
    if cfg.get("data"):
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    else:
        run = run_dir_of(ckpt)
        if run is None:
            raise MRLError(
                f"no training config found above {ckpt} (.hydra/config.yaml); "
                "choose the data with data=<fashion_mnist|cifar10|...>"
            )
        train_cfg = OmegaConf.load(run.hydra_config)
        OmegaConf.set_struct(train_cfg, False)
        data_cfg = OmegaConf.to_container(train_cfg.data, resolve=True)
    overrides = OmegaConf.to_container(cfg.get("data_overrides") or {}, resolve=True)
    data_cfg.update({k: v for k, v in overrides.items() if v is not None})
    return data_cfg


def _eval_worker(rank: int, args: tuple) -> None:
    """One of ``devices`` processes: embed this rank's shard; rank 0 evaluates and writes."""
    ckpt, data_cfg, evaluators, out, device_type, logger_cfg, wandb_name, kwargs, link = args
    module = load_module(ckpt)
    dm = instantiate(data_cfg)
    device = torch.device(f"cuda:{rank}" if device_type == "cuda" else "cpu")
    loggers = instantiate_all(logger_cfg, wandb=wandb_name) if rank == 0 else []
    try:
        if rank == 0:  # the W&B link to the training run, handed back through link["reply"]
            t = link_to_training(loggers, link["trained_by"], link["eval_cfg"])
            Path(link["reply"]).write_text(json.dumps(t))
        evaluate_run(module, dm, evaluators, out, device=device, loggers=loggers, **kwargs)
    finally:
        close_wandb(loggers)


def eval_task(cfg: DictConfig) -> dict[str, float]:
    """``eval.py``: evaluate a checkpoint or embeddings; returns the run dir's metrics.

    ``devices=N`` (N > 1) embeds a checkpoint's splits in N processes (gloo on CPU, NCCL on
    GPUs), each an unpadded shard; rank 0 gathers them and runs the evaluators, so the
    metrics are those of one process (up to float rounding).
    """
    run = RunDir(cfg.paths.output_dir)
    devices = integer(
        cfg.get("devices", 1),
        "devices",
        min=1,
        hint="(the number of processes of the embedding pass)",
    )
    evaluators = build_evaluators(OmegaConf.to_container(cfg.get("eval") or {}, resolve=False))
    search_device = use_search_device(str((cfg.get("search") or {}).get("device", "auto")))
    with search_device, RunDirClaim(run.path, "eval") as claim:  # search.device: before any write
        if claim.fresh:  # a new run dir: nothing to protect, record the command at once
            claim.commit(cfg)
        with run_record(
            claim.record_path, defer=not claim.fresh, task="eval", evaluators=list(evaluators)
        ) as record:
            return _eval(cfg, run, evaluators, devices, record, claim)


def _eval(cfg: DictConfig, run: RunDir, evaluators, devices: int, record, claim) -> dict:
    extra = list(cfg.get("extra_dims") or [])
    only = _only_dims(cfg)
    plots = bool(cfg.get("plots", True))
    loggers: list = []

    def commit() -> None:  # every check passed: from here on the run dir is this command's
        claim.commit(cfg)
        record.commit()

    try:
        sources = [k for k in ("embeddings", "encoder") if cfg.get(k)]
        if not OmegaConf.is_missing(cfg, "ckpt_path") and cfg.get("ckpt_path") is not None:
            sources.insert(0, "ckpt_path")
        if len(sources) > 1:
            raise MRLError(
                f"{' and '.join(sources)} are both given; evaluate one source at a time: "
                "ckpt_path=<ckpt>, embeddings=<arrays> or encoder=<timm|sentence_transformers>"
            )
        if cfg.get("encoder"):
            return _eval_encoder(cfg, run, evaluators, record, commit, extra, only, plots)
        if cfg.get("embeddings"):
            if devices > 1:
                print(f"embeddings: devices={devices} ignored (no embedding pass to share)")
            data = EvalData.from_arrays(load_embeddings(cfg.embeddings, mmap=True))
            if not _evaluators_chosen():  # the default list: what bare embeddings allow
                skipped = [n for n, e in evaluators.items() if e.needs_heads]
                evaluators = {n: e for n, e in evaluators.items() if not e.needs_heads}
                print(f"embeddings: skipping {skipped} (they need a model's trained heads)")
            dims = eval_dims([], extra, data.width, only) or auto_dims(data.width)
            sizes = {"train": len(data.train_x), "test": len(data.test_x)}
            sizes["val"] = 0 if data.val_x is None else len(data.val_x)
            check_sizes(evaluators, sizes, data.num_classes, data.width)
            commit()
            return evaluate_arrays(
                data, evaluators, dims, run.path, title=str(cfg.embeddings), plots=plots
            )
        ckpt = Path(str(cfg.ckpt_path)).expanduser()
        raw = read_training_checkpoint(ckpt)
        kind = checkpoint_kind(raw, ckpt)
        if kind != "image":
            if devices > 1:
                print(f"{kind} checkpoint: devices={devices} ignored (one process embeds)")
            fn = _eval_text_ckpt if kind == "text" else _eval_image_text_ckpt
            return fn(cfg, run, evaluators, record, commit, extra, only, plots, ckpt, raw)
        module = _image_module(raw, ckpt)
        del raw
        data_cfg = _data_config(cfg, ckpt)
        dm = instantiate(data_cfg)
        record.update(method=module.method, dims=module.dims, ckpt=str(ckpt))
        device = _device(str(cfg.get("device", "auto")))
        kwargs = dict(
            meta={"ckpt": str(ckpt.resolve()), "ckpt_fingerprint": file_fingerprint(ckpt)},
            extra_dims=extra,
            dims=only,
            use_cache=bool(cfg.get("cache", True)),
            plots=plots,
            title=f"{module.method} ({module.hparams.model.get('name')})",
        )
        logger_cfg = OmegaConf.to_container(cfg.get("logger") or {}, resolve=True)
        wandb_name = {"name": cfg.get("run_name") or f"eval-{module.method}"}
        link = trained_by(ckpt)  # W&B: the training run this evaluates (same group)
        wandb_name.update(eval_init_kwargs(link))
        if devices > 1:
            match_data(module, dm)  # one-line errors before any process starts
            check_sizes(evaluators, dm.split_sizes(), int(dm.num_classes), embed_width(module))
            record.update(processes=devices)
            backend = "nccl" if device.type == "cuda" else "gloo"
            commit()
            eval_cfg = OmegaConf.to_container(cfg, resolve=True)
            with tempfile.TemporaryDirectory() as tmp:
                reply = Path(tmp) / "trained_by.json"
                link_args = {"trained_by": link, "eval_cfg": eval_cfg, "reply": str(reply)}
                spawn(
                    _eval_worker,
                    devices,
                    (
                        ckpt,
                        data_cfg,
                        evaluators,
                        run.path,
                        device.type,
                        logger_cfg,
                        wandb_name,
                        kwargs,
                        link_args,
                    ),
                    backend=backend,
                )
                t = json.loads(reply.read_text()) if reply.is_file() else {}
            record.update({"trained_by": t} if t else {})
            return read_record(run.metrics)
        match_data(module, dm)
        check_sizes(evaluators, dm.split_sizes(), int(dm.num_classes), embed_width(module))
        commit()
        loggers = instantiate_all(logger_cfg, wandb=wandb_name)
        eval_cfg = OmegaConf.to_container(cfg, resolve=True)
        record.update({"trained_by": t} if (t := link_to_training(loggers, link, eval_cfg)) else {})
        metrics = evaluate_run(
            module, dm, evaluators, run.path, device=device, loggers=loggers, **kwargs
        )
        settings = {**artifact_settings(logger_cfg), "checkpoints": False}  # the eval's input
        record.update(log_run_artifacts(loggers, run.path, settings))
        report_skipped(dm, record)
        return metrics
    finally:
        close_wandb(loggers)


def _default_for_encoder(cfg: DictConfig, evaluators: dict, retrieval: bool) -> dict:
    """The default evaluator list for an encoder: without the ones needing trained heads (images
    and text classification); on text retrieval data ``text_retrieval`` (with ``eval``'s
    precisions, baselines and adaptor options)."""
    if _evaluators_chosen():
        return evaluators
    if retrieval:
        reserved = {
            k: v
            for k, v in OmegaConf.to_container(cfg.get("eval") or {}, resolve=False).items()
            if k in ("precisions", "baselines", "adaptor")
        }
        target = {"_target_": "mrl.eval.text_retrieval.TextRetrieval"}
        return build_evaluators({"text_retrieval": target, **reserved})
    skipped = [n for n, e in evaluators.items() if e.needs_heads or getattr(e, "needs_model", 0)]
    print(f"encoder: skipping {skipped} (they need a model's trained heads)")
    return {n: e for n, e in evaluators.items() if n not in skipped}


def _class_problems(evaluators: dict, dm) -> dict[str, str]:
    """What the class labels of text classification data (``dm.glosses``) rule out, before
    the embedding pass: ``{name: one line}`` for few-shot evaluators whose episodes the
    classes cannot fill (WordNet's lexicographer classes are long-tailed), found by their own
    checks (:func:`mrl.eval.fewshot.fewshot_metrics`, one episode on constant 1-d vectors)."""
    import numpy as np

    from mrl.eval.fewshot import FewShot, fewshot_metrics

    found: dict[str, str] = {}
    few = {n: e for n, e in evaluators.items() if isinstance(e, FewShot)}
    if not few:
        return found
    ys = {s: dm.glosses(s)[1] for s in ("train", "test")}
    xs = {s: np.ones((len(y), 1), np.float32) for s, y in ys.items()}
    for name, ev in few.items():
        settings = {**ev.settings, "episodes": 1}
        try:
            for classes in (None, ev.heldout_classes) if ev.heldout_classes else (None,):
                fewshot_metrics(
                    xs["train"],
                    ys["train"],
                    xs["test"],
                    ys["test"],
                    [1],
                    **settings,
                    classes=classes,
                )
        except MRLError as e:
            found[name] = str(e)
    return found


def _eval_encoder(cfg, run, evaluators, record, commit, extra, only, plots) -> dict:
    """``eval.py encoder=...``: embed with an encoder not trained here, then evaluate."""
    from mrl.encoders import build_encoder, encoder_settings

    missing = [k for k in cfg.encoder if OmegaConf.is_missing(cfg.encoder, k)]
    if missing:
        raise MRLError(
            f"encoder.{missing[0]} is required, e.g. encoder.name=resnet18 (encoder=timm: any "
            "name of timm.list_models()) or a folder (encoder=sentence_transformers)"
        )
    settings = encoder_settings(OmegaConf.to_container(cfg.encoder, resolve=True))
    if not cfg.get("data"):
        raise MRLError(
            f"encoder={settings['kind']} needs the data to embed: data=<fashion_mnist|cifar10|"
            "imagefolder|...> for images, data=wordnet for text"
        )
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    overrides = OmegaConf.to_container(cfg.get("data_overrides") or {}, resolve=True)
    data_cfg.update({k: v for k, v in overrides.items() if v is not None})
    dm = instantiate(data_cfg)
    devices = int(cfg.get("devices", 1))
    if devices > 1:
        print(f"encoder: devices={devices} ignored (one process embeds)")
    device = _device(str(cfg.get("device", "auto")))
    encoder = build_encoder(settings, dm, device)
    name = cfg.get("run_name") or f"eval-{settings['kind']}-{Path(settings['name']).name}"
    return _embed_and_evaluate(
        cfg,
        run,
        evaluators,
        record,
        commit,
        extra,
        only,
        plots,
        encoder=encoder,
        dm=dm,
        device=device,
        split=str(settings.get("split", "test")),
        trained=[],
        title=f"{settings['kind']} {settings['name']}",
        wandb={"name": name},
    )


def _embed_and_evaluate(
    cfg,
    run,
    evaluators,
    record,
    commit,
    extra,
    only,
    plots,
    *,
    encoder,
    dm,
    device,
    split: str,
    trained: list[int],
    title: str,
    wandb: dict,
    link: dict | None = None,
) -> dict:
    """The encoder door after its encoder is built (:func:`mrl.encoders.build_encoder`, or a
    trained text model of a checkpoint): default evaluators, dims (``trained`` plus
    ``extra_dims``, or ``dims``; none: :func:`auto_dims`), one embedding pass (cached),
    :func:`evaluate_arrays`. ``link``: the training run of a checkpoint (W&B)."""
    import time

    from mrl.encoders import encoder_embeddings, is_text_data, text_task

    text = is_text_data(dm)
    task = text_task(dm) if text else None  # retrieval | classification, else one line
    retrieval = task == "retrieval"
    chosen = _evaluators_chosen()
    evaluators = _default_for_encoder(cfg, evaluators, retrieval)
    dims = eval_dims(trained, extra, encoder.width, only) or auto_dims(encoder.width)
    if not retrieval:  # what the split sizes rule out, before the embedding pass
        check_sizes(evaluators, dm.split_sizes(), int(dm.num_classes), encoder.width)
    if task == "classification":  # and what the classes rule out
        for name, problem in _class_problems(evaluators, dm).items():
            if chosen:
                raise MRLError(f"eval.{name} {problem}")
            print(f"encoder: skipping {name} on these classes ({problem})")
            evaluators = {n: e for n, e in evaluators.items() if n != name}
    meta = {"encoder": encoder.describe(), "data": repr(dm)}
    if text:  # the task too (repr(dm) names it as well): one task's cache never serves another
        meta |= {"split": split} if retrieval else {"task": task}
    else:
        meta |= {"transform": _transform_of(dm)}
    record.update(encoder=encoder.describe(), evaluators=list(evaluators))
    commit()
    loggers: list = []
    try:
        logger_cfg = OmegaConf.to_container(cfg.get("logger") or {}, resolve=True)
        loggers = instantiate_all(logger_cfg, wandb=wandb)
        if link is not None:
            eval_cfg = OmegaConf.to_container(cfg, resolve=True)
            t = link_to_training(loggers, link, eval_cfg)
            record.update({"trained_by": t} if t else {})
        t0 = time.time()
        arrays, reused = encoder_embeddings(
            encoder, dm, run.embeddings, meta, device, bool(cfg.get("cache", True)), split
        )
        timing = {"embed": round(time.time() - t0, 2), "embeddings_reused": reused}
        num_classes = None if retrieval else int(dm.num_classes)
        data = EvalData.from_arrays(arrays, num_classes)
        metrics = evaluate_arrays(
            data,
            evaluators,
            dims,
            run.path,
            title=title,
            plots=plots,
            loggers=loggers,
            timing=timing,
        )
        report_skipped(dm, record)
        return metrics
    finally:
        close_wandb(loggers)


def _eval_text_ckpt(cfg, run, evaluators, record, commit, extra, only, plots, ckpt, raw) -> dict:
    """``eval.py ckpt_path=<text run's checkpoint>``: its trained TextEncoder (any objective)
    through the encoder door, as ``encoder=sentence_transformers`` evaluates the same model
    exported with ``mrl-export`` (:class:`mrl.encoders.TrainedTextEncoder`), on the run's
    data (``data=`` overrides), at its trained dims plus ``extra_dims`` (or ``dims``). The
    data's ``task`` decides the evaluation (retrieval, or classification of the glosses:
    ``data_overrides.task=classification`` on the run's own data); an MLM run's own data
    (``task=mlm``) is evaluated as retrieval."""
    from mrl.encoders import SETTINGS, TrainedTextEncoder, is_text_data
    from mrl.export import text_encoder_of

    data_cfg = _data_config(cfg, ckpt)
    overrides = cfg.get("data_overrides") or {}
    if data_cfg.get("task") == "mlm" and not cfg.get("data") and overrides.get("task") is None:
        data_cfg["task"] = "retrieval"  # an MLM run's own data: its encoder's retrieval
        print(
            "checkpoint's data has task=mlm: evaluated as task=retrieval "
            "(data_overrides.task=classification for its gloss classes)"
        )
    dm = instantiate(data_cfg)
    if not is_text_data(dm):
        raise MRLError(
            f"checkpoint {ckpt} holds a text model but data {getattr(dm, 'name', '')!r} is "
            "images; evaluate it on text data (data=wordnet), or leave data= out for its own"
        )
    model, info = text_encoder_of(raw, ckpt)
    del raw
    device = _device(str(cfg.get("device", "auto")))
    batch = SETTINGS["sentence_transformers"]["batch_size"]
    encoder = TrainedTextEncoder(model, info, ckpt, batch_size=batch, device=device)
    del model
    record.update(method=info["method"], dims=info["dims"], ckpt=str(ckpt))
    link = trained_by(ckpt)  # W&B: the training run this evaluates (same group)
    wandb = {"name": cfg.get("run_name") or f"eval-{info['method']}", **eval_init_kwargs(link)}
    return _embed_and_evaluate(
        cfg,
        run,
        evaluators,
        record,
        commit,
        extra,
        only,
        plots,
        encoder=encoder,
        dm=dm,
        device=device,
        split="test",
        trained=list(info["dims"]),
        title=f"{info['method']} ({info['model']}) {ckpt.name}",
        wandb=wandb,
        link=link,
    )


def _eval_image_text_ckpt(
    cfg, run, evaluators, record, commit, extra, only, plots, ckpt, raw
) -> dict:
    """``eval.py ckpt_path=<image_text run's checkpoint>``: the dual encoder rebuilt, its test
    split embedded, and :meth:`ImageTextLitModule.evaluate` (the training run's test metrics:
    ``test/{i2t,t2i}_R@{k}@d{m}``, ``test/zeroshot_top1@d{m}``, ``test/knn_top{1,5}@d{m}``;
    :mod:`mrl.eval.image_text`) at the trained dims plus ``extra_dims`` (or ``dims``)."""
    import time

    from mrl.data.base import follow_model_transforms
    from mrl.eval.report import report
    from mrl.objectives.image_text import ImageTextLitModule
    from mrl.run.files import update_metrics_json, write_json_atomic

    hp = raw["hyper_parameters"]
    hp = {**hp, "model": {**hp["model"], "pretrained": False}}  # the weights are the ckpt's
    try:
        module = ImageTextLitModule(**hp)
    except TypeError as e:
        raise MRLError(f"checkpoint {ckpt} is not an objective=image_text checkpoint: {e}") from e
    missing, unexpected = module.load_state_dict(raw["state_dict"], strict=False)
    del raw
    if missing or unexpected:
        raise MRLError(
            f"checkpoint {ckpt} does not match its config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    dm = instantiate(_data_config(cfg, ckpt))
    if not hasattr(dm, "eval_texts"):
        raise MRLError(
            f"checkpoint {ckpt} holds an image-text model but data {getattr(dm, 'name', '')!r} "
            "has no captions; use data=fashion_mnist_captions or data=image_text, or leave "
            "data= out for its own"
        )
    if int(dm.in_chans) != int(hp["in_chans"]):
        raise MRLError(
            f"checkpoint {ckpt} expects {hp['in_chans']}-channel images but the data has "
            f"{dm.in_chans}; evaluate it on the data it was trained on"
        )
    if _evaluators_chosen():
        print("image_text checkpoint: eval=[...] ignored (its own metrics: mrl.eval.image_text)")
    width = int(module.eval_dims[-1])
    module.eval_dims = eval_dims(module.eval_dims, extra, width, only)
    device = _device(str(cfg.get("device", "auto")))
    module = module.to(device).eval()
    module._to_memory_format()  # channels_last as the training run's test pass
    follow_model_transforms(dm, module)  # timm's transform for the image tower, as training
    if hasattr(dm, "set_tokenizer"):
        dm.set_tokenizer(module.net.text.tokenizer_fn())
    dm.setup("test")
    record.update(method=module.method, dims=module.dims, ckpt=str(ckpt), evaluators=["image_text"])
    link = trained_by(ckpt)
    wandb = {"name": cfg.get("run_name") or f"eval-{module.method}", **eval_init_kwargs(link)}
    commit()
    loggers: list = []
    try:
        logger_cfg = OmegaConf.to_container(cfg.get("logger") or {}, resolve=True)
        loggers = instantiate_all(logger_cfg, wandb=wandb)
        eval_cfg = OmegaConf.to_container(cfg, resolve=True)
        t = link_to_training(loggers, link, eval_cfg)
        record.update({"trained_by": t} if t else {})
        t0 = time.time()
        xs, groups, labels = [], [], []
        with torch.no_grad():
            for batch in dm.test_dataloader():
                xs.append(module.net.embed_images(batch["image"].to(device)).float().cpu())
                groups.append(batch["group"])
                labels.append(batch["label"])
        x, group = torch.cat(xs).numpy(), torch.cat(groups).numpy()
        label = torch.cat(labels).numpy()
        embed_s = time.time() - t0
        with torch.no_grad():
            metrics = module.evaluate("test", x, group, label, dm)
        timing = {"embed": round(embed_s, 2), "image_text": round(time.time() - t0 - embed_s, 2)}
        final = update_metrics_json(run.metrics, metrics)
        write_json_atomic(run.eval_timing, timing)
        names = [f"test/{n}" for n in ("i2t_R@1", "t2i_R@1", "zeroshot_top1", "knn_top1")]
        title = f"{module.method} ({hp['model'].get('name')}) {ckpt.name}"
        report(final, metrics, names, module.eval_dims, run.path, title, plots, loggers)
        print(f"timing (s): {timing}")
        print(f"run dir: {run.path}")
        report_skipped(dm, record)
        return final
    finally:
        close_wandb(loggers)


def _transform_of(dm) -> Any:
    """The data module's evaluation transform (recorded in the cache's meta.json)."""
    from mrl.inference import preprocessing_of

    try:
        return preprocessing_of(dm)
    except MRLError:
        return str(getattr(dm, "data_config", ""))
