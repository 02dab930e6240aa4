"""Minimal-pair tasks (BLiMP-style) drawn from a data build's held-out text: `nexus-eval tasks prepare --data DIR`.

An item is a sentence or code line of the build's val split (in distribution) or of one of its OOD domains, and a
copy of it with two adjacent words (prose) or two adjacent tokens (code) swapped: the same characters, reordered, so
neither length nor vocabulary gives the answer away. A model gets an item right when it gives the intact text the
higher total log-likelihood (lm-eval multiple_choice with an empty context, metric acc; chance 0.5), as lm-eval's
BLiMP tasks. Length-changing corruptions were tried and rejected: tiny models prefer the shorter string whatever it is.

Items of a family are drawn by a RNG seeded by (family, version, build hash): the same build gives byte-identical
files; a new build (other data) gives other items. Neither string of an item occurs in the build's train split (an
exact substring test over the decoded train tokens, whitespace collapsed): the tasks measure a skill, not the recall
of a sentence trained on. Families, filters and the reasons for them: tasks/README.md ("Minimal pairs").
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nexus_eval.data.contamination import ngram_hashes, words
from nexus_eval.errors import EvalError
from nexus_eval.io import Quoted, dump_yaml, write_text_atomic
from nexus_eval.schema import MinimalPair
from nexus_eval.tasks.synthetic.common import jsonl

ITEMS_PER_FAMILY = 300
VERSION = 1  # bump when a filter or a corruption changes: it seeds the draw and is the tasks' metadata.version
PAIRS_PREFIX = "pairs_"
DATA_SUBDIR = "pairs"  # tasks/generated/pairs/<task>/test.jsonl

SENTENCE_WORDS = (8, 25)  # prose sentences: long enough to have a word order, short enough to be one clause or two
COMMENT_WORDS = (6, 25)  # comment lines are wrapped at 79 columns: fewer words per line than sentences
CODE_LINE_CHARS = (15, 80)
CODE_LINE_TOKENS = 4
CODE_SYMBOL_SHARE = 0.145  # OOD domain → code corruption at or above it; measured: prose 0.05-0.08, math 0.12,
#                           Python 0.17, C headers 0.17 (non-alphanumeric share of non-space characters)
PREFILTER_N = 4  # word n-grams that rule a candidate out of the train text without scanning it

WORD = re.compile(r"[A-Za-z]+")  # only plain words are swapped: order, not punctuation or case, is what is tested
PARAGRAPH = re.compile(r"\n\s*\n")
DIGITS = re.compile(r"[0-9]+")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
COMPLETE_SENTENCE = re.compile(r"[A-Z].*[.!?][\"')\]]*")  # not: headings, bullets, "#### 72", "3x + 1 = 7."
CODE_TOKEN = re.compile(r"""[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|\S""")
CODE_MARKS = set("()[]{}=")  # a code line has one: wrapped docstring prose and bare words do not count as code
LINE_COMMENT = re.compile(r"(^|\s)#(\s|$)|//")  # Python "# ..." and C "// ..."; C's "#define" is code
BLOCK_DELIMITERS = {'"""': '"""', "'''": "'''", "/*": "*/"}  # docstrings and C block comments


@dataclass(frozen=True)
class PairFamily:
    """One minimal-pair task: which text it draws from and how it corrupts it."""

    name: str
    split: str  # "val" | "ood"
    source: str  # the val source or OOD domain
    units: str  # "sentences" | "comments" | "code_lines": what an item is cut from (UNITS)
    what: str  # one line for the YAML header

    @property
    def corruption(self) -> str:
        return "token_swap" if self.units == "code_lines" else "word_swap"


# In-distribution families per val source of a build (sources a build lacks are skipped): (name, source, units, what)
IN_DISTRIBUTION = [
    ("pairs_text_order", "text", "sentences", "two adjacent words swapped in a prose sentence of val text"),
    ("pairs_code_order", "code", "code_lines", "two adjacent tokens (one a symbol) swapped in a val code line"),
    ("pairs_math_order", "math", "sentences", "two adjacent words swapped in a sentence of a val math problem"),
    # transfer: English word order, learnt mostly from the text source, asked in the format of code comments
    ("pairs_comment_order", "code", "comments", "two adjacent words swapped in a '# ...' comment line of val code"),
]


# ---- units: the sentences and lines items are cut from, with the index of their document ----


def sentences(doc: str) -> Iterator[list[str]]:
    """Complete ASCII sentences (a capital letter first, a full stop, ! or ? last) of SENTENCE_WORDS words, as word
    lists; lines of a paragraph are joined first (prose is wrapped: a sentence runs over line breaks)."""
    for paragraph in PARAGRAPH.split(doc):
        for sentence in SENTENCE_END.split(" ".join(paragraph.split())):
            tokens = sentence.split()
            if _within(len(tokens), SENTENCE_WORDS) and sentence.isascii() and COMPLETE_SENTENCE.fullmatch(sentence):
                yield tokens


def comments(doc: str) -> Iterator[list[str]]:
    """Python comment lines ("# " and COMMENT_WORDS words), as word lists; the "#" is the first word."""
    for line in doc.split("\n"):
        text = line.strip()
        if text.startswith("# ") and text.isascii() and _within(len(text.split()) - 1, COMMENT_WORDS):
            yield text.split()


def code_lines(doc: str) -> Iterator[str]:
    """Stripped code lines of CODE_LINE_CHARS characters with a bracket or "=" and CODE_LINE_TOKENS tokens; lines in
    or touching a docstring or block comment and lines with a line comment are left out (they hold prose)."""
    closing: str | None = None  # the delimiter that ends the block we are in
    for line in doc.split("\n"):
        text = line.strip()
        if closing is not None:
            closing = None if closing in text else closing
            continue
        closing = _opened_block(text)
        if closing is not None or any(d in text for d in BLOCK_DELIMITERS) or LINE_COMMENT.search(text):
            continue
        if (
            _within(len(text), CODE_LINE_CHARS)
            and text.isascii()
            and CODE_MARKS & set(text)
            and len(CODE_TOKEN.findall(text)) >= CODE_LINE_TOKENS
        ):
            yield text


def _opened_block(text: str) -> str | None:
    """The closing delimiter when `text` opens a docstring or block comment that it does not close."""
    for opening, closing in BLOCK_DELIMITERS.items():
        if opening == closing and text.count(opening) % 2 == 1:
            return closing
        if opening != closing and opening in text and closing not in text[text.rindex(opening) + len(opening) :]:
            return closing
    return None


def _within(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


UNITS: dict[str, Callable[[str], Iterator[list[str] | str]]] = {
    "sentences": sentences,
    "comments": comments,
    "code_lines": code_lines,
}


# ---- corruptions: same characters, two neighbours swapped ----


def swap_words(tokens: list[str], rng: random.Random) -> tuple[str, str, int] | None:
    """(good, bad, i): words i and i+1 swapped, both plain words (WORD) that differ; never the first word, whose
    capital letter would give the swap away. None when the sentence has no such pair."""
    places = [
        i
        for i in range(1, len(tokens) - 1)
        if WORD.fullmatch(tokens[i]) and WORD.fullmatch(tokens[i + 1]) and tokens[i].lower() != tokens[i + 1].lower()
    ]
    if not places:
        return None
    i = rng.choice(places)
    swapped = tokens[:i] + [tokens[i + 1], tokens[i]] + tokens[i + 2 :]
    return " ".join(tokens), " ".join(swapped), i


def _is_symbol(token: str) -> bool:
    return not (token[0].isalnum() or token[0] in "_'\"")


def swap_tokens(line: str, rng: random.Random) -> tuple[str, str, int] | None:
    """(good, bad, k): code tokens k and k+1 swapped, the whitespace between them kept in place; the two differ and
    at least one is a symbol (a bracket, operator or punctuation moved by one token: a syntax error, whereas two
    swapped names can still be valid code). String literals are single tokens. None when no pair qualifies."""
    spans = [m.span() for m in CODE_TOKEN.finditer(line)]
    texts = [line[a:b] for a, b in spans]
    places = [
        k
        for k in range(len(spans) - 1)
        if texts[k] != texts[k + 1] and (_is_symbol(texts[k]) or _is_symbol(texts[k + 1]))
    ]
    if not places:
        return None
    k = rng.choice(places)
    (a1, b1), (a2, b2) = spans[k], spans[k + 1]
    bad = line[:a1] + texts[k + 1] + line[b1:a2] + texts[k] + line[b2:]
    return line, bad, k


def is_code_domain(docs: list[str]) -> bool:
    """The OOD rule: a domain whose non-space characters are CODE_SYMBOL_SHARE or more symbols is code."""
    chars = "".join("".join(docs).split())
    return bool(chars) and sum(not c.isalnum() for c in chars) / len(chars) >= CODE_SYMBOL_SHARE


# ---- the train split, as text: no item may occur in it ----


class TrainText:
    """One train source decoded from its token shards, whitespace collapsed, for exact substring tests. A sorted
    array of its word PREFILTER_N-gram hashes answers most tests without scanning the text: a candidate with an
    inner n-gram the text lacks cannot occur in it (its first and last words may be cut-off words of the text)."""

    def __init__(self, text: str) -> None:
        self.text = " ".join(text.split())
        self.ngrams = np.unique(ngram_hashes(words(self.text), PREFILTER_N))

    def __contains__(self, candidate: str) -> bool:
        flat = " ".join(candidate.split())
        inner = words(flat)[1:-1]
        if len(inner) >= PREFILTER_N and len(self.ngrams):
            hashes = ngram_hashes(inner, PREFILTER_N)
            found = self.ngrams[np.minimum(np.searchsorted(self.ngrams, hashes), len(self.ngrams) - 1)] == hashes
            if not found.all():
                return False
        return flat in self.text


def train_texts(data_dir: Path) -> dict[str, TrainText]:
    """Every train source of the build as TrainText (decoding costs ~1.5 s per 3M tokens)."""
    from nexus_eval.data import load_manifest, load_tokenizer, open_tokens, train_source_names

    manifest = load_manifest(data_dir)
    tokenizer = load_tokenizer(data_dir)
    eos = tokenizer.decode([manifest["eos_id"]])
    texts = {}
    for source in train_source_names(manifest):
        ids = np.asarray(open_tokens(data_dir, "train", source)).tolist()
        texts[source] = TrainText(tokenizer.decode(ids).replace(eos, "\n"))
    return texts


# ---- families and their items ----


def pair_families(data_dir: Path) -> list[tuple[PairFamily, list[str]]]:
    """The build's families with the documents each draws from: IN_DISTRIBUTION for the val sources the build has,
    then `pairs_ood_<domain>` per OOD domain (code corruption when is_code_domain, else word swap)."""
    from nexus_eval.data import load_manifest, ood_names, read_docs

    manifest = load_manifest(data_dir)
    families = [
        (PairFamily(name, "val", source, units, what), read_docs(data_dir, "val", source))
        for name, source, units, what in IN_DISTRIBUTION
        if source in manifest["sources"]
    ]
    for domain in ood_names(manifest):
        docs = read_docs(data_dir, "ood", domain)
        if is_code_domain(docs):
            family = PairFamily(f"pairs_ood_{domain}", "ood", domain, "code_lines", f"code corruption of {domain}")
        else:
            family = PairFamily(f"pairs_ood_{domain}", "ood", domain, "sentences", f"word swap in {domain} prose")
        families.append((family, docs))
    return families


def generate_family(
    family: PairFamily, docs: list[str], train: list[TrainText], build_hash: str, count: int = ITEMS_PER_FAMILY
) -> list[MinimalPair]:
    """Up to `count` items, neither string in any of `train`, in a seeded order. Good strings that differ only in
    their numbers count as one (the build's generated math repeats templates with other numbers)."""
    rng = random.Random(f"nexus-pairs:{family.name}:v{VERSION}:{build_hash}")
    units = [(index, unit) for index, doc in enumerate(docs) for unit in UNITS[family.units](doc)]
    rng.shuffle(units)
    corrupt = swap_tokens if family.units == "code_lines" else swap_words
    items: list[MinimalPair] = []
    seen: set[str] = set()
    for index, unit in units:
        swapped = corrupt(unit, rng)  # code lines are strings, sentences and comments word lists
        if swapped is None or (template := DIGITS.sub("0", swapped[0])) in seen:
            continue
        good, bad, position = swapped
        if any(good in text or bad in text for text in train):
            continue
        seen.add(template)
        items.append(
            MinimalPair(
                good=good,
                bad=bad,
                source=family.source,
                split=family.split,
                source_doc=index,
                corruption=family.corruption,
                position=position,
            )
        )
        if len(items) == count:
            break
    return items


def generate_pairs(data_dir: Path, count: int = ITEMS_PER_FAMILY) -> dict[str, tuple[PairFamily, list[MinimalPair]]]:
    """Every family of the build with its items. Val families are checked against their own source's train split
    (the rest of the same documents' distribution), OOD families against every train source."""
    from nexus_eval.data import load_manifest

    if count < 1:
        raise EvalError(f"--pair-items {count}: must be at least 1")
    build_hash = load_manifest(data_dir)["hash"]
    train = train_texts(data_dir)
    out = {}
    for family, docs in pair_families(data_dir):
        against = [train[family.source]] if family.split == "val" else list(train.values())
        out[family.name] = (family, generate_family(family, docs, against, build_hash, count))
    return out


# ---- lm-eval tasks ----


def pair_task_yaml(data_dir: Path, family: PairFamily, path: Path, data_hash: str) -> str:
    """The lm-eval task of one family: its items scored as lm-eval's BLiMP tasks."""
    config = {
        "task": family.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": Quoted(str(path))}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": Quoted(""),
        "doc_to_target": 0,
        "doc_to_choice": Quoted("{{[good, bad]}}"),
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": float(VERSION), "data_hash": data_hash},
    }
    comments = [
        f"Generated by `nexus-eval tasks prepare --data {data_dir}`: do not edit or commit (absolute paths).",
        f"Minimal pairs as lm-eval's BLiMP tasks: {family.what}.",
        "Right when the intact text (choice 0) has the higher total log-likelihood; chance 0.5. The context is empty:",
        "lm-eval scores each choice as a whole, after the tokenizer's BOS (here the end-of-text token between "
        "documents).",
    ]
    return dump_yaml(config, comments)


def write_pair_tasks(data_dir: Path, out: Path, count: int = ITEMS_PER_FAMILY) -> dict[str, dict]:
    """`<out>/pairs_<family>.yaml` and `<out>/pairs/<task>/test.jsonl` per family of the build; the YAMLs and data
    of families this build does not have (another build's) are removed. A family without items is not written."""
    from nexus_eval.data import load_manifest

    data_hash = load_manifest(data_dir)["hash"]
    summary: dict[str, dict] = {}
    written: set[str] = set()
    for name, (family, items) in generate_pairs(data_dir, count).items():
        origin = f"{family.split}/{family.source}.jsonl of {data_dir} ({family.corruption})"
        if not items:
            summary[name] = {"source": f"skipped: no item of {origin} passes the filters", "splits": {}}
            continue
        path = (out / DATA_SUBDIR / name / "test.jsonl").resolve()
        write_text_atomic(path, jsonl(items))
        write_text_atomic(out / f"{name}.yaml", pair_task_yaml(data_dir, family, path, data_hash))
        written.add(name)
        note = "" if len(items) == count else f"; only {len(items)} of {count} pass the filters"
        summary[name] = {"source": origin + note, "splits": {"test": len(items)}}
    _remove_stale(out, written)
    return summary


def _remove_stale(out: Path, written: set[str]) -> None:
    for stale in out.glob(f"{PAIRS_PREFIX}*.yaml"):
        if stale.stem not in written:
            stale.unlink()
    data = out / DATA_SUBDIR
    for stale in data.glob(f"{PAIRS_PREFIX}*") if data.is_dir() else []:
        if stale.name not in written and stale.is_dir():
            shutil.rmtree(stale)
