"""WordNet 3.0 as text data: (query, gloss) pairs for retrieval, glosses with their
lexicographer class (45 classes) for classification.

Where the data come from
------------------------
``root`` (default ``/usr/share/wordnet``, Debian's ``wordnet-base``) holds the WordNet
database files (``data.noun``, ``index.noun``, ...). They are read with NLTK's
``WordNetCorpusReader``. Two things stand between Debian's files and that reader, both
solved in ``cache_dir`` (default ``~/.cache/mrl/wordnet``):

* Debian ships no ``lexnames`` file, which the reader requires: it is generated from
  :data:`LEXNAMES`, the 45 lexicographer files of the lexnames(5WN) manual page
  (``NN<TAB>name<TAB>syntactic category``).
* NLTK reads corpora only inside ``nltk.data.path`` and refuses symbolic and hard links
  that lead outside the corpus folder. The database files are therefore *copied* (about
  28 MB, once) next to the generated ``lexnames`` into ``cache_dir/nltk-<hash of root>``,
  and that folder is appended to ``nltk.data.path``.

Parsing every synset with NLTK takes ~15 s, so the parsed records (name, lexicographer
class, lemma names, examples, gloss) are stored once as ``synsets.json`` in the same folder
and reused while the source files keep their sizes and modification times.

Splits (by synset; no synset is in two splits)
----------------------------------------------
Synsets are ordered by name. Each gets a seeded uniform number ``u`` (stream ``seed``):
``u < test_size`` -> test, ``u < test_size + val_size`` -> val, else train. A synset's
split therefore depends only on ``(seed, val_size, test_size)``, never on ``max_synsets``.
``max_synsets=N`` keeps the first ``N`` synsets of a seeded permutation (a growing N only
adds synsets); ``val_subset`` / ``test_subset`` cap the evaluation splits the same way.
Within a split, synsets keep the permutation's order.

Tasks
-----
* Retrieval: a *query* is a lemma name of a synset (underscores -> spaces) or one of its
  example sentences (``queries``); its one relevant *document* is that synset's gloss
  (definition). Training items are synsets; each time a synset is drawn, one of its queries
  is drawn uniformly (``torch``'s global generator: seeded runs repeat), so a batch never
  holds two pairs of the same synset (no false in-batch negatives of that kind). Evaluation
  ranks, for every query of the split's synsets, the glosses of *all* the split's synsets.
* Classification (``task="classification"``): a gloss (definition) -> its synset's
  lexicographer class (``num_classes = 45``, names in ``classes``, e.g. ``noun.animal``);
  every synset of a split is one item (no query is needed). :meth:`WordNetDataModule.glosses`
  gives a split's glosses and class ids directly.
* Masked language modelling (``task="mlm"``): the texts of a split's synsets, each gloss
  followed by its example sentences (:meth:`WordNetDataModule.texts`). The masking is the
  model's (``objective=mlm`` gives a masking tokenizer, ``tokenize(texts, seed)``): training
  batches draw masks from torch's global generator (``seed=None``); evaluation batches use
  ``seed = crc32(batch texts) ^ data.seed``, so every evaluation masks the same tokens.

Retrieval batches are dicts: training ``{"query", "doc"}``; evaluation ``{"text", "doc_id":
LongTensor, "is_query": BoolTensor}``. Classification batches are ``(texts, labels)`` tuples
(``labels`` a LongTensor), as image batches are ``(images, labels)``, in every split. MLM
batches are the masking tokenizer's dict (``input_ids``, ``attention_mask``, ``labels`` with
-100 at unmasked positions), or ``{"text": [...]}`` before a tokenizer is given. The texts are
lists of strings, or the model's tokens once the model has given its tokenizer
(:meth:`WordNetDataModule.set_tokenizer`, as image data take the model's transform). In
retrieval evaluation the split's synsets come one after another, each as its gloss
(``is_query`` false, ``doc_id`` its row in the split) followed by its queries (``doc_id`` =
the relevant gloss), so ``limit_{val,test}_batches`` evaluates whole synsets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mrl.core.errors import MRLError
from mrl.data.base import check_int, seeded_permutation
from mrl.run.distributed import shard_sampler

log = logging.getLogger(__name__)

SYSTEM_ROOT = Path("/usr/share/wordnet")
CACHE_ROOT = Path("~/.cache/mrl/wordnet")
#: the database files NLTK's reader opens (``lexnames`` is generated; Debian lacks
#: ``index.sense``, which the reader only needs for sense keys)
DB_FILES = (
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
)
OPTIONAL_FILES = ("cntlist.rev", "index.sense")
#: the 45 lexicographer files of WordNet 3.0, numbered 00..44 (lexnames(5WN))
LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)
#: the syntactic-category field of ``lexnames``: 1 noun, 2 verb, 3 adjective, 4 adverb
CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
QUERY_KINDS = ("lemma", "example")
TASKS = ("retrieval", "classification", "mlm")
RECORDS = "synsets.json"
#: a model's tokenizer: strings -> dict of (B, L) tensors
Tokenize = Callable[[list[str]], dict[str, torch.Tensor]]
FORMAT = 1


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<TAB>name<TAB>category`` per lexicographer file."""
    return "".join(
        f"{i:02d}\t{name}\t{CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)
    )


def _source_state(root: Path) -> dict[str, Any]:
    files = [f for f in (*DB_FILES, *OPTIONAL_FILES) if (root / f).is_file()]
    return {
        "format": FORMAT,
        "root": str(root),
        "files": {f: [(root / f).stat().st_size, (root / f).stat().st_mtime_ns] for f in files},
    }


def check_root(root: str | os.PathLike) -> Path:
    """``root`` as a path holding the WordNet database files, or a one-line MRLError."""
    path = Path(root).expanduser()
    missing = [f for f in DB_FILES if not (path / f).is_file()]
    if missing:
        raise MRLError(
            f"WordNet is not in data.root={str(root)!r} (no {missing[0]}); install it with "
            "`apt-get install wordnet-base` (files in /usr/share/wordnet) or set data.root to a "
            "folder holding data.noun, index.noun, ..."
        )
    return path.resolve()


def prepare_corpus(root: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """The NLTK-readable copy of ``root`` (database files + generated ``lexnames``) under
    ``cache_dir``, built once (atomically: a temporary sibling, then a rename)."""
    src = check_root(root)
    state = _source_state(src)
    digest = hashlib.sha256(str(src).encode()).hexdigest()[:10]
    folder = Path(cache_dir).expanduser() / f"nltk-{digest}"
    marker = folder / "source.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == state:
                return folder
        except ValueError:
            pass
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in state["files"]:
        shutil.copyfile(src / name, tmp / name)  # NLTK refuses links out of the corpus
        os.chmod(tmp / name, 0o644)  # and files others may write
    (tmp / "lexnames").write_text(lexnames_text())
    os.chmod(tmp / "lexnames", 0o644)
    (tmp / "source.json").write_text(json.dumps(state))
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    if folder.exists():
        folder.rename(old)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def wordnet_reader(corpus: Path):
    """NLTK's ``WordNetCorpusReader`` on a folder made by :func:`prepare_corpus`."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _Reader(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet"):
            # the data *are* WordNet 3.0, the version NLTK maps others onto: no mapping
            return None

    if str(corpus) not in nltk.data.path:
        nltk.data.path.append(str(corpus))  # NLTK reads only inside its data path
    import warnings

    with warnings.catch_warnings():  # "multilingual functions are not available": no OMW
        warnings.simplefilter("ignore", UserWarning)
        return _Reader(str(corpus), None)


@functools.lru_cache(maxsize=2)
def load_synsets(root: str, cache_dir: str) -> tuple[dict[str, Any], ...]:
    """Every synset of the WordNet at ``root``, sorted by name: dicts with ``name``,
    ``lexname`` (class id 0..44), ``lemmas`` (underscores -> spaces, duplicates dropped),
    ``examples`` and ``gloss``. Parsed once with NLTK, then read from ``synsets.json``."""
    corpus = prepare_corpus(root, cache_dir)
    path = corpus / RECORDS
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("source") == json.loads((corpus / "source.json").read_text()):
                return tuple(data["synsets"])
        except (ValueError, KeyError):
            pass
    t = time.time()
    reader = wordnet_reader(corpus)
    index = {name: i for i, name in enumerate(LEXNAMES)}
    out = []
    for s in reader.all_synsets():
        lemmas = list(dict.fromkeys(n.replace("_", " ") for n in s.lemma_names()))
        out.append(
            {
                "name": s.name(),
                "lexname": index[s.lexname()],
                "lemmas": lemmas,
                "examples": list(s.examples()),
                "gloss": s.definition(),
            }
        )
    out.sort(key=lambda r: r["name"])
    tmp = path.with_name(f".{RECORDS}.{os.getpid()}.tmp")
    source = json.loads((corpus / "source.json").read_text())
    tmp.write_text(json.dumps({"source": source, "synsets": out}))
    tmp.replace(path)
    log.info("parsed %d WordNet synsets in %.1fs into %s", len(out), time.time() - t, path)
    return tuple(out)


def check_fraction(value: Any, name: str) -> float:
    """A fraction in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise MRLError(f"{name}={value!r} is invalid; use a fraction of the synsets in [0, 1)")
    return float(value)


def split_synsets(
    n: int,
    seed: int,
    val_size: float,
    test_size: float,
    max_synsets: int | None = None,
) -> dict[str, np.ndarray]:
    """Row indices of the train / val / test synsets among ``n`` synsets sorted by name
    (see the module doc: a seeded number per synset decides its split; ``max_synsets``
    keeps the first N of a seeded permutation). Each array is in permutation order."""
    u = np.random.default_rng([seed, 20]).random(n)
    order = seeded_permutation(n, seed, 21)
    if max_synsets is not None:
        order = order[:max_synsets]
    uo = u[order]
    return {
        "test": order[uo < test_size],
        "val": order[(uo >= test_size) & (uo < test_size + val_size)],
        "train": order[uo >= test_size + val_size],
    }


def synset_queries(record: dict[str, Any], kinds: Sequence[str]) -> list[str]:
    """The queries of one synset: its lemma names and / or examples (``kinds``)."""
    out: list[str] = []
    if "lemma" in kinds:
        out += record["lemmas"]
    if "example" in kinds:
        out += record["examples"]
    return out


class PairDataset(Dataset):
    """Training pairs: item ``i`` is ``(a query drawn from synset i's queries, its gloss)``."""

    def __init__(self, queries: list[list[str]], docs: list[str]) -> None:
        self.queries, self.docs = queries, docs

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, i: int) -> tuple[str, str]:
        qs = self.queries[i]
        return qs[int(torch.randint(len(qs), ()))], self.docs[i]


class EvalDataset(Dataset):
    """Evaluation items ``(text, doc_id, is_query)``: each synset's gloss, then its queries."""

    def __init__(self, queries: list[list[str]], docs: list[str]) -> None:
        self.items: list[tuple[str, int, bool]] = []
        for j, (qs, d) in enumerate(zip(queries, docs, strict=True)):
            self.items.append((d, j, False))
            self.items += [(q, j, True) for q in qs]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, int, bool]:
        return self.items[i]


def _texts(texts: list[str], tokenize: Tokenize | None) -> Any:
    return texts if tokenize is None else tokenize(texts)


def collate_pairs(batch: list[tuple[str, str]], tokenize: Tokenize | None = None) -> dict:
    """``{"query", "doc"}``: lists of strings, or their tokens when ``tokenize`` is given."""
    return {
        "query": _texts([q for q, _ in batch], tokenize),
        "doc": _texts([d for _, d in batch], tokenize),
    }


class GlossDataset(Dataset):
    """Classification items ``(gloss, lexicographer class id)``."""

    def __init__(self, glosses: list[str], labels: np.ndarray) -> None:
        self.glosses, self.labels = glosses, labels

    def __len__(self) -> int:
        return len(self.glosses)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.glosses[i], int(self.labels[i])


def collate_glosses(batch: list[tuple[str, int]], tokenize: Tokenize | None = None) -> tuple:
    """``(texts, labels)``: texts as strings or tokens, labels a LongTensor."""
    return (
        _texts([t for t, _ in batch], tokenize),
        torch.tensor([y for _, y in batch], dtype=torch.long),
    )


class TextDataset(Dataset):
    """MLM items: one text each."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]


def collate_mlm(batch: list[str], tokenize: Any = None, seed: int | None = None) -> dict:
    """A masked batch from the model's masking tokenizer (``tokenize(texts, seed=...)``):
    ``seed=None`` masks with torch's global generator; an int ``seed`` is mixed with the
    texts' crc32 (the same batch is always masked the same way)."""
    texts = list(batch)
    if tokenize is None:
        return {"text": texts}
    if seed is not None:
        seed = zlib.crc32("\x1f".join(texts).encode()) ^ int(seed)
    return tokenize(texts, seed=seed)


def collate_eval(batch: list[tuple[str, int, bool]], tokenize: Tokenize | None = None) -> dict:
    """``{"text", "doc_id", "is_query"}`` (``text`` tokenised when ``tokenize`` is given)."""
    return {
        "text": _texts([t for t, _, _ in batch], tokenize),
        "doc_id": torch.tensor([j for _, j, _ in batch], dtype=torch.long),
        "is_query": torch.tensor([q for _, _, q in batch], dtype=torch.bool),
    }


class WordNetDataModule(pl.LightningDataModule):
    """WordNet 3.0 (query, gloss) pairs and gloss classes, split by synset.

    Args:
        root: folder with the WordNet database files (Debian: ``/usr/share/wordnet``).
        cache_dir: where the NLTK-readable copy and the parsed records go.
        batch_size: training pairs per batch (in-batch negatives); eval_batch_size: texts
            per evaluation batch (default: ``batch_size``).
        val_size, test_size: fractions of the synsets in val and test.
        seed: the split's seed; max_synsets: keep only N synsets (fast runs, tests);
        val_subset, test_subset: at most this many synsets in val / test (evaluation cost);
        train_subset: at most this many training synsets (e.g. a smaller kNN database for
            ``eval.py``; the first of the split's seeded order: val and test are unchanged).
        queries: query kinds, any of ``lemma`` and ``example`` (retrieval).
        task: ``retrieval`` (query -> gloss pairs), ``classification`` (gloss -> class) or
            ``mlm`` (glosses and examples, masked by the model's masking tokenizer).
        num_workers, pin_memory: as for every datamodule.
    """

    name = "wordnet"
    classes = LEXNAMES
    num_classes = len(LEXNAMES)

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: float = 0.05,
        test_size: float = 0.05,
        seed: int = 0,
        max_synsets: int | None = None,
        val_subset: int | None = None,
        test_subset: int | None = None,
        queries: Sequence[str] = QUERY_KINDS,
        pin_memory: bool = False,
        task: str = "retrieval",
        train_subset: int | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser() if root is not None else SYSTEM_ROOT
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else CACHE_ROOT.expanduser()
        self.batch_size = check_int("batch_size", batch_size, 1)
        eval_bs = check_int("eval_batch_size", eval_batch_size, 1, allow_none=True)
        self.eval_batch_size = self.batch_size if eval_bs is None else eval_bs
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.val_size = check_fraction(val_size, "val_size")
        self.test_size = check_fraction(test_size, "test_size")
        if self.val_size + self.test_size >= 1:
            raise MRLError(
                f"val_size + test_size = {self.val_size + self.test_size} leaves no training "
                "synsets; keep their sum below 1"
            )
        self.seed = check_int("seed", seed, 0)
        self.max_synsets = check_int("max_synsets", max_synsets, 1, allow_none=True)
        self.val_subset = check_int("val_subset", val_subset, 1, allow_none=True)
        self.test_subset = check_int("test_subset", test_subset, 1, allow_none=True)
        self.train_subset = check_int("train_subset", train_subset, 1, allow_none=True)
        kinds = [queries] if isinstance(queries, str) else list(queries or [])
        bad = [k for k in kinds if k not in QUERY_KINDS]
        if not kinds or bad:
            raise MRLError(
                f"queries={queries!r} is invalid; use a non-empty list of {list(QUERY_KINDS)}"
            )
        self.queries = tuple(kinds)
        if task not in TASKS:
            raise MRLError(f"data.task={task!r} is invalid; use one of {list(TASKS)}")
        self.task = task
        self.pin_memory = bool(pin_memory)
        self.tokenize: Tokenize | None = None
        self._records: tuple[dict[str, Any], ...] | None = None
        self._splits: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ data
    def prepare_data(self) -> None:
        load_synsets(str(check_root(self.root)), str(self.cache_dir))

    def setup(self, stage: str | None = None) -> None:
        if self._records is not None:
            return
        records = load_synsets(str(check_root(self.root)), str(self.cache_dir))
        splits = split_synsets(
            len(records), self.seed, self.val_size, self.test_size, self.max_synsets
        )
        caps = (("train", self.train_subset), ("val", self.val_subset), ("test", self.test_subset))
        for split, cap in caps:
            if cap is not None:
                splits[split] = splits[split][:cap]
        # retrieval: synsets without any query of the chosen kinds cannot be queried
        keep_all = self.task != "retrieval"
        self._splits = {
            s: np.asarray(
                [i for i in idx if keep_all or synset_queries(records[i], self.queries)],
                dtype=np.int64,
            )
            for s, idx in splits.items()
        }
        self._records = records
        if not len(self._splits["train"]):
            raise MRLError(
                f"max_synsets={self.max_synsets} leaves no training synsets; use a larger value"
            )

    def synsets(self, split: str) -> list[dict[str, Any]]:
        """The records of a split's synsets (``train``, ``val``, ``test``), in split order."""
        if split not in ("train", "val", "test"):
            raise MRLError(f"split={split!r} is invalid; use train, val or test")
        self.setup()
        assert self._records is not None and self._splits is not None
        return [self._records[i] for i in self._splits[split]]

    def synset_names(self, split: str) -> list[str]:
        return [r["name"] for r in self.synsets(split)]

    def pairs(self, split: str) -> tuple[list[list[str]], list[str]]:
        """``(queries per synset, gloss per synset)`` of a split."""
        recs = self.synsets(split)
        return [synset_queries(r, self.queries) for r in recs], [r["gloss"] for r in recs]

    def glosses(self, split: str) -> tuple[list[str], np.ndarray]:
        """A split's glosses and their lexicographer class ids (int64, 0..44)."""
        recs = self.synsets(split)
        return [r["gloss"] for r in recs], np.asarray([r["lexname"] for r in recs], np.int64)

    def texts(self, split: str) -> list[str]:
        """A split's texts for MLM: each synset's gloss, then its example sentences."""
        return [t for r in self.synsets(split) for t in (r["gloss"], *r["examples"])]

    def split_sizes(self) -> dict[str, int]:
        """Number of synsets in train / val / test."""
        return {s: len(self.synsets(s)) for s in ("train", "val", "test")}

    # ------------------------------------------------------------------ loaders
    def set_tokenizer(self, tokenize: Tokenize | None) -> None:
        """Tokenise the texts of every batch with ``tokenize`` (``None``: plain strings);
        ``task=mlm``: a masking tokenizer ``tokenize(texts, seed=None)``."""
        self.tokenize = tokenize

    def _loader(self, ds: Dataset, shuffle: bool, batch_size: int, collate) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=None if shuffle else shard_sampler(ds),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        if self.task == "classification":
            collate = functools.partial(collate_glosses, tokenize=self.tokenize)
            return self._loader(
                GlossDataset(*self.glosses("train")), True, self.batch_size, collate
            )
        if self.task == "mlm":
            collate = functools.partial(collate_mlm, tokenize=self.tokenize)
            return self._loader(TextDataset(self.texts("train")), True, self.batch_size, collate)
        ds = PairDataset(*self.pairs("train"))
        collate = functools.partial(collate_pairs, tokenize=self.tokenize)
        return self._loader(ds, True, self.batch_size, collate)

    def eval_dataloader(self, split: str) -> DataLoader | list:
        """The evaluation items of ``split`` (``[]`` when it has no synsets)."""
        if self.task == "classification":
            texts, labels = self.glosses(split)
            if not texts:
                return []
            collate = functools.partial(collate_glosses, tokenize=self.tokenize)
            return self._loader(GlossDataset(texts, labels), False, self.eval_batch_size, collate)
        if self.task == "mlm":
            texts = self.texts(split)
            if not texts:
                return []
            collate = functools.partial(collate_mlm, tokenize=self.tokenize, seed=self.seed)
            return self._loader(TextDataset(texts), False, self.eval_batch_size, collate)
        queries, docs = self.pairs(split)
        if not docs:
            return []
        collate = functools.partial(collate_eval, tokenize=self.tokenize)
        return self._loader(EvalDataset(queries, docs), False, self.eval_batch_size, collate)

    def val_dataloader(self) -> DataLoader | list:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader | list:
        loader = self.eval_dataloader("test")
        if loader == []:
            raise MRLError("the WordNet test split is empty; raise test_size or max_synsets")
        return loader

    def __repr__(self) -> str:
        return (
            f"WordNetDataModule(root={str(self.root)!r}, seed={self.seed}, "
            f"val_size={self.val_size}, test_size={self.test_size}, "
            f"max_synsets={self.max_synsets}, val_subset={self.val_subset}, "
            f"test_subset={self.test_subset}, train_subset={self.train_subset}, "
            f"queries={list(self.queries)}, task={self.task!r})"
        )
