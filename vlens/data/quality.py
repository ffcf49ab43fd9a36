"""Quality gates for value data, in plain Python (no model): can style alone tell the poles apart, do single
non-content words or framing cues give a pole away, are scenarios retold across files and splits, and are the
minimal pairs minimal.

Used by the tests (the gates on the shipped files), the data card, `vlens data` and anyone writing their own
value data: ``python -m vlens.data.quality [DATA_DIR]`` prints the gate table for a folder of files.

Every gate is a function returning numbers; :func:`gates` runs them all on a :class:`ValueData` and
:func:`gate_table` prints the result compactly.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from vlens.data.loaders import ValueData

# ---------------------------------------------------------------------------------------------- word lists

# Function words: the closed classes of English (determiners, pronouns, prepositions, conjunctions, auxiliaries,
# modals, common adverbs and contractions). They say how a text is written, not what it is about.
FUNCTION_WORDS: frozenset[str] = frozenset(
    """a an the this that these those some any each every either neither all both few many much more most other
    another such no none own same i me my mine myself we us our ours ourselves you your yours yourself yourselves
    he him his himself she her hers herself it its itself they them their theirs themselves one ones what which who
    whom whose when where why how whatever whenever about above across after against along among around as at
    before behind below beneath beside besides between beyond by down during except for from in inside into like
    near of off on onto out outside over past per since through throughout till to toward towards under until up
    upon with within without and but or nor so yet because although though while whereas if unless whether than
    then once am is are was were be been being have has had having do does did doing done get gets got can could
    may might must shall should will would ought not very just also too only even still really quite rather again
    ever never always often sometimes usually here there now already almost enough perhaps maybe instead else
    i'm i've i'd i'll don't doesn't didn't isn't aren't wasn't weren't can't won't wouldn't couldn't shouldn't
    haven't hasn't it's that's there's let's we're we've we'd we'll they're they've they'd you're you've you'd
    he's she's what's who's""".split()
)
# Framing words: how a stance is announced ("I like", "what matters to me", "it feels right"), not what it is.
# The v1 audit found these carry the pole (issue 14), so they count as style, not content.
FRAMING_WORDS: frozenset[str] = frozenset(
    """like likes liked enjoy enjoys enjoyed prefer prefers preferred love loves loved want wants wanted matter
    matters mattered important feel feels felt right happy happiest glad suit suits""".split()
)
NON_CONTENT: frozenset[str] = FUNCTION_WORDS | FRAMING_WORDS
PUNCTUATION = ",.;:!?\"'()-"

# Framing cues counted per pole (issue 14's audit). Occurrences, not texts, are counted.
CUES: dict[str, re.Pattern[str]] = {
    "like/enjoy/prefer/love": re.compile(
        r"\bI(?:'d| would)? (?:really |truly |much |do )?(?:like|enjoy|prefer|love|rather)\b|\bfeels? right\b|\bsuits? me\b",
        re.I,
    ),
    "because/so that": re.compile(r"\bbecause\b|\bso that\b", re.I),
    "want/matter/important": re.compile(r"\bwant(?:s|ed)?\b|\bmatter(?:s|ed)?\b|\bimportant\b", re.I),
    "modal verbs": re.compile(r"\b(?:can|could|may|might|must|shall|should|will|would|ought)\b|\b\w+'(?:ll|d)\b", re.I),
    "semicolons": re.compile(";"),
    "own": re.compile(r"\bown\b", re.I),
    "my": re.compile(r"\bmy\b", re.I),
}

# ---------------------------------------------------------------------------------------------- gate limits

MAX_STYLE_ACCURACY = 0.60  # a style-only classifier may not beat this (chance is 0.50)
MAX_LOG_ODDS_Z = 2.5  # no non-content word with |z| above this between poles
LOG_ODDS_ALPHA = 500.0  # total pseudo-count of the informative Dirichlet prior (see log_odds)
CUE_TOLERANCE, CUE_SLACK = 0.10, 1  # cue counts a, b pass when |a - b| <= max(CUE_SLACK, CUE_TOLERANCE * max(a, b))
MAX_PAIR_LENGTH_GAP = 3  # words between the two texts of a minimal pair
# Rare-word TF-IDF cosine at or above which two items tell the same scenario and must share a group.
# Calibrated by reading (scripts/build_valueinsight_v2.py --calibrate) on the v2 texts plus the v1 questions:
# - rare words = stemmed content words in at most 3% of the ~2,600 items. With 1% too few words survive, and one
#   shared word ("flat", "ceremony") puts unrelated items at 0.35; with 3% the v1 audit's retold pairs still score
#   0.34-0.87 (oc.q.009 / co.q.221 0.61, co.q.252 / oc.q.348 0.60, se.q.277 / se.q.167 0.38).
# - at 0.35, about 8 of the 30 pairs nearest the threshold retell one scenario (chess club ranked or casual,
#   se.q.135 / se.q.384; app-only banking, co.q.119 / oc.q.321; a study group's library corner, co.q.169 /
#   oc.q.145), so the threshold must be lower;
# - at 0.30, about 6 of 30 still share a scenario (a daughter's gap year, co.q.222 / st.q.072; a weekly
#   community-hall night, co.q.272 / oc.q.373; cutting down on sweets, oc.q.237 / se.q.258); the rest share a
#   topic word only. Below 0.30 the groups percolate (at 0.28 one group swallows hundreds of items), so 0.30 is the
#   lowest threshold whose groups stay small; false merges only cost the splits some freedom.
NEAR_DUPLICATE_TFIDF = 0.30
RARE_MAX_DF = 0.03  # a "rare" word occurs in at most this share of all items
# Word 3-gram Jaccard at which two texts are one text reworded (v1's near-duplicate measure, kept for wording).
NEAR_DUPLICATE = 0.5

NEGATION = re.compile(r"\b(not|no|never|nothing|nobody|none|don't|doesn't|isn't|won't|can't|cannot|neither|nor|without)\b", re.I)
HEDGE = re.compile(r"\b(maybe|perhaps|probably|might|somewhat|rather|a bit|kind of|sort of)\b", re.I)


def words(text: str) -> list[str]:
    """Lower-cased words, apostrophes kept (``i'm``, ``don't``); curly apostrophes are straightened first."""
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower().replace("\u2019", "'"))


# ---------------------------------------------------------------------------------------------- style classifier


def style_features(text: str) -> list[str]:
    """The style of a text as features: each non-content word (``w:``), each punctuation mark (``p:``), the first
    word and the first two words (``o1:``, ``o2:``). Content words are left out on purpose."""
    ws = words(text)
    feats = [f"w:{w}" for w in ws if w in NON_CONTENT]
    feats += [f"p:{ch}" for ch in text.replace("\u2019", "'") if ch in PUNCTUATION]
    if ws:
        feats += [f"o1:{ws[0]}", f"o2:{' '.join(ws[:2])}"]
    return feats


@dataclass(frozen=True)
class StyleAccuracy:
    """Leave-one-group-out accuracy of the style-only classifier, and its distribution under label shuffles."""

    accuracy: float
    null: list[float]  # accuracy under each label shuffle (within groups)
    null_p95: float
    n_texts: int
    n_groups: int

    @property
    def passed(self) -> bool:
        return self.accuracy <= MAX_STYLE_ACCURACY


def _nb_accuracy(
    x: Float[Tensor, "text feature"],
    y: Int[Tensor, "run text"],
    g: Int[Tensor, " text"],
    n_groups: int,
    smoothing: float,
) -> Float[Tensor, " run"]:
    """Multinomial naive Bayes, trained without each group in turn and tested on it, for every row of labels at
    once: subtracting a group's counts from the totals replaces refitting. A tie counts half."""
    onehot = torch.nn.functional.one_hot(y, 2).to(x.dtype)  # run text class
    member = torch.nn.functional.one_hot(g, n_groups).to(x.dtype)  # text group
    per_group = einops.einsum(onehot, member, x, "r t c, t g, t f -> r g c f")
    train = einops.reduce(per_group, "r g c f -> r 1 c f", "sum") - per_group  # every group left out in turn
    log_theta = (train + smoothing).log() - (einops.reduce(train, "r g c f -> r g c 1", "sum") + smoothing * x.shape[1]).log()
    docs = einops.einsum(onehot, member, "r t c, t g -> r g c")
    train_docs = einops.reduce(docs, "r g c -> r 1 c", "sum") - docs
    log_prior = (train_docs + 1).log() - (einops.reduce(train_docs, "r g c -> r g 1", "sum") + 2).log()
    scores = einops.einsum(log_theta[:, g], x, "r t c f, t f -> r t c") + log_prior[:, g]
    own = scores.gather(-1, y[..., None]).squeeze(-1)
    other = scores.gather(-1, (1 - y)[..., None]).squeeze(-1)
    correct = (own > other).to(x.dtype) + 0.5 * (own == other).to(x.dtype)
    return einops.reduce(correct, "r t -> r", "mean")


def style_accuracy(
    texts: Sequence[str],
    labels: Sequence[Hashable],
    groups: Sequence[Hashable] | None = None,
    *,
    n_shuffles: int = 30,
    seed: int = 0,
    smoothing: float = 1.0,
) -> StyleAccuracy:
    """How well a naive-Bayes classifier on :func:`style_features` predicts the pole, leave-one-group-out.

    ``groups``: texts that must be held out together. For minimal pairs pass the pair (the dilemma, for its two
    options): holding out one text would leave its near-identical partner, with the other label, in training
    and push accuracy far below chance. Labels are shuffled within each group for the null (globally when
    ``groups`` is None, where every text is its own group for the leave-out). ``smoothing``: Laplace pseudo-count.
    """
    if len(texts) != len(labels) or (groups is not None and len(groups) != len(texts)):
        raise ValueError(f"texts, labels and groups need the same length, got {len(texts)}, {len(labels)} and "
                         f"{len(groups) if groups is not None else '-'}")  # fmt: skip
    classes = sorted(set(labels), key=str)
    if len(classes) != 2:
        raise ValueError(f"style_accuracy needs exactly two labels (the poles), got {classes}")
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be at least 1, got {n_shuffles}")
    feats = [style_features(t) for t in texts]
    vocab = {f: i for i, f in enumerate(sorted({f for fs in feats for f in fs}))}
    x = torch.zeros(len(texts), max(len(vocab), 1), dtype=torch.float64)
    for i, fs in enumerate(feats):
        for f, n in Counter(fs).items():
            x[i, vocab[f]] = n
    y = torch.tensor([classes.index(lab) for lab in labels])
    group_ids = list(range(len(texts))) if groups is None else groups
    index = {k: i for i, k in enumerate(dict.fromkeys(group_ids))}
    g = torch.tensor([index[k] for k in group_ids])
    # Shuffles permute labels within each shuffle group: sort by group, break ties at random.
    shuffle_g = torch.zeros_like(g) if groups is None else g
    gen = torch.Generator().manual_seed(seed)
    order = torch.argsort(shuffle_g, stable=True)
    keys = shuffle_g[None].double() + torch.rand(n_shuffles, len(texts), generator=gen, dtype=torch.float64) * 0.5
    shuffled = torch.empty(n_shuffles, len(texts), dtype=torch.long)
    shuffled.scatter_(1, torch.argsort(keys, dim=1), y[order].expand(n_shuffles, -1).contiguous())
    acc = _nb_accuracy(x, torch.cat([y[None], shuffled]), g, len(index), smoothing)
    null = acc[1:]
    return StyleAccuracy(float(acc[0]), [round(float(a), 4) for a in null], float(torch.quantile(null, 0.95)),
                         len(texts), len(index))  # fmt: skip


# ---------------------------------------------------------------------------------------------- log-odds


@dataclass(frozen=True)
class WordLogOdds:
    word: str
    count_plus: int
    count_minus: int
    delta: float  # log-odds ratio, + against -
    z: float


def log_odds(
    plus_texts: Sequence[str], minus_texts: Sequence[str], *, alpha: float = LOG_ODDS_ALPHA
) -> list[WordLogOdds]:
    """Log-odds ratio of every word between the two poles, with an informative Dirichlet prior (Monroe, Colaresi
    & Quinn 2008, "Fightin' words"), sorted by |z|, largest first.

    Prior: word ``w`` gets ``alpha_w = alpha * n_w / N`` pseudo-counts, ``n_w`` its count in all texts of both
    poles and ``N`` the number of words in them; ``alpha`` (default 500) is the prior's total mass, about a sixth
    of the ~3,000 words of one dimension's descriptions, so frequent words are barely shrunk and rare ones a lot.
    With ``y`` the counts and ``n`` the totals of a pole:
    ``delta_w = log((y+_w + a_w) / (n+ + alpha - y+_w - a_w)) - log((y-_w + a_w) / (n- + alpha - y-_w - a_w))``,
    ``var = 1 / (y+_w + a_w) + 1 / (y-_w + a_w)``, ``z = delta / sqrt(var)``.
    """
    if alpha <= 0:
        raise ValueError(f"alpha (the prior's total pseudo-count) must be positive, got {alpha}")
    cp = Counter(w for t in plus_texts for w in words(t))
    cm = Counter(w for t in minus_texts for w in words(t))
    vocab = sorted(cp.keys() | cm.keys())
    if not vocab:
        return []
    yp = torch.tensor([cp[w] for w in vocab], dtype=torch.float64)
    ym = torch.tensor([cm[w] for w in vocab], dtype=torch.float64)
    prior = alpha * (yp + ym) / (yp + ym).sum()
    np_, nm = yp.sum(), ym.sum()
    delta = ((yp + prior) / (np_ + alpha - yp - prior)).log() - ((ym + prior) / (nm + alpha - ym - prior)).log()
    z = delta / (1 / (yp + prior) + 1 / (ym + prior)).sqrt()
    out = [WordLogOdds(w, cp[w], cm[w], float(d), float(s)) for w, d, s in zip(vocab, delta, z, strict=True)]
    return sorted(out, key=lambda r: (-abs(r.z), r.word))


def worst_non_content_word(plus_texts: Sequence[str], minus_texts: Sequence[str]) -> WordLogOdds | None:
    """The non-content word (:data:`NON_CONTENT`) whose log-odds z between the poles is largest in size."""
    return next((r for r in log_odds(plus_texts, minus_texts) if r.word in NON_CONTENT), None)


# ---------------------------------------------------------------------------------------------- cues


@dataclass(frozen=True)
class CueCount:
    cue: str
    plus: int
    minus: int

    @property
    def passed(self) -> bool:
        """Within 10% of the larger count, or within 1 when both counts are small (under 10)."""
        return abs(self.plus - self.minus) <= max(CUE_SLACK, CUE_TOLERANCE * max(self.plus, self.minus))


def cue_counts(plus_texts: Sequence[str], minus_texts: Sequence[str]) -> list[CueCount]:
    """Occurrences of each framing cue (:data:`CUES`) in the texts of each pole."""
    count = lambda texts, rx: sum(len(rx.findall(t)) for t in texts)  # noqa: E731
    return [CueCount(name, count(plus_texts, rx), count(minus_texts, rx)) for name, rx in CUES.items()]


# ---------------------------------------------------------------------------------------------- near-duplicates


def _stem(word: str) -> str:
    """A crude suffix stripper, enough for "hike / hiking / hikes" to meet; never shorter than four letters."""
    word = word.removesuffix("'s")
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) + len(repl) >= 4:
            return word[: len(word) - len(suffix)] + repl
    return word


def content_words(text: str) -> list[str]:
    return [_stem(w) for w in words(text) if w not in NON_CONTENT and len(w) >= 3]


def tfidf_pairs(texts: Sequence[str], *, floor: float = 0.2, max_df: float = RARE_MAX_DF) -> list[tuple[float, int, int]]:
    """(cosine, i, j), i < j, for every two texts whose rare-word TF-IDF cosine is at least ``floor``, largest first.

    Rare words: stemmed content words that occur in at most ``max_df`` of the texts (and in at least two, since a
    word of one text links nothing). Weights: ``(1 + log tf) * log(N / df)``, rows L2-normalised.
    """
    from scipy import sparse

    docs = [Counter(content_words(t)) for t in texts]
    df = Counter(w for d in docs for w in d)
    n = len(texts)
    keep = {w for w, c in df.items() if 2 <= c <= max(2, max_df * n)}
    vocab = {w: i for i, w in enumerate(sorted(keep))}
    rows, cols, vals = [], [], []
    for i, d in enumerate(docs):
        for w, tf in d.items():
            if w in vocab:
                rows.append(i)
                cols.append(vocab[w])
                vals.append((1 + math.log(tf)) * math.log(n / df[w]))
    m = sparse.csr_matrix((vals, (rows, cols)), shape=(n, max(len(vocab), 1)))
    norms = torch.tensor(m.multiply(m).sum(axis=1)).flatten().sqrt().clamp(min=1e-12)
    m = sparse.diags((1 / norms).numpy()) @ m
    sim = sparse.triu(m @ m.T, k=1).tocoo()
    found = [(float(v), int(i), int(j)) for v, i, j in zip(sim.data, sim.row, sim.col, strict=True) if v >= floor - 1e-12]
    return sorted(found, key=lambda p: (-p[0], p[1], p[2]))


@dataclass(frozen=True)
class Item:
    """One text of the near-duplicate check: a description, a question or a whole dilemma."""

    id: str
    kind: str
    dimension: str
    split: str
    group: str | None
    text: str


def items_of(data: ValueData) -> list[Item]:
    """Every description, question and dilemma (context and both options) as one item each."""
    out = [Item(d["id"], "description", d["dimension"], d.get("split", "both"), d.get("group"), d["text"])
           for d in data.descriptions]  # fmt: skip
    out += [Item(q["id"], "question", q["dimension"], q.get("split", "search"), q.get("group"), q["text"])
            for q in data.questions]
    out += [Item(f["id"], "dilemma", f["dimension"], f.get("split", "test"), f.get("group"),
                 f"{f['context']} {f['option_plus']} {f['option_minus']}") for f in data.dilemmas]  # fmt: skip
    return out


def held_out(split: str) -> bool:
    """``test`` and ``dev`` are held out from ``search``; a v1 description (``both``) is in both."""
    return split in ("test", "dev")


def connected_groups(n: int, edges: Sequence[tuple[int, int]]) -> list[int]:
    """Connected components of a graph on ``n`` nodes: each node's component, numbered by its smallest node."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = [root(i) for i in range(n)]
    number = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return [number[r] for r in roots]


@dataclass(frozen=True)
class NearDuplicates:
    threshold: float
    pairs_above: int
    not_sharing_group: list[tuple[str, str, float]]  # pairs above the threshold in different (or no) groups
    across_splits: list[tuple[str, str, float]]  # pairs above the threshold, one in search and one held out

    @property
    def passed(self) -> bool:
        return not self.not_sharing_group


def near_duplicates(data: ValueData, *, threshold: float = NEAR_DUPLICATE_TFIDF) -> NearDuplicates:
    """Pairs of items (across ALL files, splits and dimensions) above the rare-word TF-IDF threshold: they must
    share a ``group``; the ones that straddle ``search`` and a held-out split leak."""
    items = items_of(data)
    pairs = [(s, items[i], items[j]) for s, i, j in tfidf_pairs([it.text for it in items], floor=threshold)]
    apart = [(a.id, b.id, round(s, 3)) for s, a, b in pairs if a.group is None or a.group != b.group]
    leak = [(a.id, b.id, round(s, 3)) for s, a, b in pairs
            if "both" not in (a.split, b.split) and held_out(a.split) != held_out(b.split)]  # fmt: skip
    return NearDuplicates(threshold, len(pairs), apart, leak)


# ---------------------------------------------------------------------------------------------- minimal pairs


def words_count(text: str) -> int:
    return len(text.split())


def pair_length_gaps(data: ValueData) -> dict[str, int]:
    """Word-count difference of every description pair (by ``pair`` id) and every dilemma (its two options)."""
    by_pair: dict[str, list[str]] = {}
    for d in data.descriptions:
        if d.get("pair"):
            by_pair.setdefault(d["pair"], []).append(d["text"])
    gaps = {p: abs(words_count(a) - words_count(b)) for p, (a, b) in by_pair.items()}  # ValueData checked: 2 each
    gaps |= {f["id"]: abs(words_count(f["option_plus"]) - words_count(f["option_minus"])) for f in data.dilemmas}
    return gaps


# ---------------------------------------------------------------------------------------------- all gates


@dataclass
class PoleGates:
    """The gates of one dimension on one kind of text (descriptions, or dilemma options)."""

    n: int
    style: StyleAccuracy
    worst_word: WordLogOdds | None
    cues: list[CueCount]
    max_length_gap: int | None  # None: no minimal pairs (v1 descriptions)

    @property
    def passed(self) -> dict[str, bool]:
        return {
            "style": self.style.passed,
            "log_odds": self.worst_word is None or abs(self.worst_word.z) <= MAX_LOG_ODDS_Z,
            "cues": all(c.passed for c in self.cues),
            "pairs": self.max_length_gap is None or self.max_length_gap <= MAX_PAIR_LENGTH_GAP,
        }


@dataclass
class Gates:
    per_dimension: dict[str, dict[str, PoleGates]]  # dimension -> "descriptions" / "dilemma options" -> gates
    near_duplicates: NearDuplicates
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.near_duplicates.passed and all(
            all(g.passed.values()) for kinds in self.per_dimension.values() for g in kinds.values()
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able numbers (the null distributions included), with each gate's verdict."""
        def pole(g: PoleGates) -> dict[str, Any]:
            return {"n": g.n, "style": asdict(g.style) | {"passed": g.style.passed},
                    "worst_word": asdict(g.worst_word) if g.worst_word else None,
                    "cues": [asdict(c) | {"passed": c.passed} for c in g.cues], "max_length_gap": g.max_length_gap,
                    "passed": g.passed}  # fmt: skip

        return {
            "limits": {"max_style_accuracy": MAX_STYLE_ACCURACY, "max_log_odds_z": MAX_LOG_ODDS_Z,
                       "log_odds_alpha": LOG_ODDS_ALPHA, "cue_tolerance": CUE_TOLERANCE, "cue_slack": CUE_SLACK,
                       "max_pair_length_gap": MAX_PAIR_LENGTH_GAP, "near_duplicate_tfidf": NEAR_DUPLICATE_TFIDF,
                       "rare_max_df": RARE_MAX_DF},  # fmt: skip
            "per_dimension": {d: {k: pole(g) for k, g in kinds.items()} for d, kinds in self.per_dimension.items()},
            "near_duplicates": asdict(self.near_duplicates) | {"passed": self.near_duplicates.passed},
            "passed": self.passed,
            **self.notes,
        }


def _pole_gates(plus: list[str], minus: list[str], groups: list[str] | None, gaps: list[int] | None,
                n_shuffles: int, seed: int) -> PoleGates:  # fmt: skip
    style = style_accuracy(plus + minus, ["+"] * len(plus) + ["-"] * len(minus), groups, n_shuffles=n_shuffles, seed=seed)
    return PoleGates(len(plus) + len(minus), style, worst_non_content_word(plus, minus), cue_counts(plus, minus),
                     max(gaps) if gaps else None)  # fmt: skip


def gates(data: ValueData, *, n_shuffles: int = 30, seed: int = 0) -> Gates:
    """Every gate on ``data``, per dimension, for descriptions and for dilemma options, plus the near-duplicates."""
    gaps = pair_length_gaps(data)
    out: dict[str, dict[str, PoleGates]] = {}
    for dim in dict.fromkeys(d["dimension"] for d in data.descriptions):
        descs = [d for d in data.descriptions if d["dimension"] == dim]
        plus = [d for d in descs if d["pole"] == "+"]
        minus = [d for d in descs if d["pole"] == "-"]
        paired = all(d.get("pair") for d in descs)
        groups = [d["pair"] for d in plus + minus] if paired else None
        kinds = {"descriptions": _pole_gates([d["text"] for d in plus], [d["text"] for d in minus], groups,
                                             [gaps[p] for p in dict.fromkeys(groups)] if paired else None,
                                             n_shuffles, seed)}  # fmt: skip
        fc = [f for f in data.dilemmas if f["dimension"] == dim]
        if fc:
            kinds["dilemma options"] = _pole_gates([f["option_plus"] for f in fc], [f["option_minus"] for f in fc],
                                                   [f["id"] for f in fc] * 2, [gaps[f["id"]] for f in fc],
                                                   n_shuffles, seed)  # fmt: skip
        out[dim] = kinds
    return Gates(out, near_duplicates(data))


def gate_table(g: Gates) -> str:
    """The per-dimension gate numbers as a compact table (`vlens data`)."""
    lines = [f"{'dimension':20s} {'texts':17s} {'n':>4s} {'style acc':>9s} {'null p95':>8s} {'worst word (z)':>20s} "
             f"{'cues off':>8s} {'len gap':>7s}  pass"]  # fmt: skip
    for dim, kinds in g.per_dimension.items():
        for kind, p in kinds.items():
            ww = f"{p.worst_word.word} ({p.worst_word.z:+.2f})" if p.worst_word else "-"
            off = [c.cue for c in p.cues if not c.passed]
            gap = "-" if p.max_length_gap is None else str(p.max_length_gap)
            verdict = "yes" if all(p.passed.values()) else "NO: " + ", ".join(k for k, v in p.passed.items() if not v)
            lines.append(f"{dim:20s} {kind:17s} {p.n:4d} {p.style.accuracy:9.3f} {p.style.null_p95:8.3f} {ww:>20s} "
                         f"{len(off):8d} {gap:>7s}  {verdict}")  # fmt: skip
    nd = g.near_duplicates
    lines.append(f"near-duplicates (rare-word TF-IDF >= {nd.threshold}): {nd.pairs_above} pairs, "
                 f"{len(nd.not_sharing_group)} not sharing a group, {len(nd.across_splits)} across search/held-out  "
                 f"{'pass' if nd.passed else 'FAIL'}")  # fmt: skip
    lines.append(f"limits: style acc <= {MAX_STYLE_ACCURACY}, |z| <= {MAX_LOG_ODDS_Z} (prior alpha {LOG_ODDS_ALPHA:g}), "
                 f"cues within max({CUE_SLACK}, {CUE_TOLERANCE:.0%} of the larger), pair length gap <= "
                 f"{MAX_PAIR_LENGTH_GAP} words")  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- v1 measures


def shingles(text: str, n: int = 3) -> frozenset[tuple[str, ...]]:
    w = words(text)
    return frozenset(tuple(w[i : i + n]) for i in range(max(len(w) - n + 1, 1)))


def most_similar(texts: Sequence[str], others: Sequence[str] | None = None) -> tuple[float, int, int]:
    """The largest word 3-gram Jaccard between two texts (within ``texts``, or between ``texts`` and ``others``)."""
    a = [shingles(t) for t in texts]
    b = a if others is None else [shingles(t) for t in others]
    pairs = itertools.combinations(range(len(a)), 2) if others is None else itertools.product(range(len(a)), range(len(b)))
    best = (0.0, -1, -1)
    for i, j in pairs:
        inter = len(a[i] & b[j])
        if inter and (jac := inter / len(a[i] | b[j])) > best[0]:
            best = (jac, i, j)
    return best


@dataclass(frozen=True)
class Wording:
    n: int
    negation_share: float
    hedge_share: float
    mean_words: float
    top_openers: list[tuple[str, int]]


def wording(texts: Sequence[str]) -> Wording:
    """How often negations and hedges appear, mean length and the commonest first words."""
    n = len(texts)
    return Wording(
        n,
        sum(bool(NEGATION.search(t)) for t in texts) / n,
        sum(bool(HEDGE.search(t)) for t in texts) / n,
        sum(len(words(t)) for t in texts) / n,
        Counter(words(t)[0] for t in texts if words(t)).most_common(3),
    )


def report(data_dir: str | None = None) -> str:
    """The gate table and the wording balance of a folder of value data (the shipped data by default)."""
    from vlens.data.loaders import load_value_data

    data = load_value_data(data_dir)
    lines = [f"{data.source} (data version {data.version})", gate_table(gates(data)), ""]
    for dim in dict.fromkeys(d["dimension"] for d in data.descriptions):
        for pole in "+-":
            w = wording([d["text"] for d in data.descriptions if d["dimension"] == dim and d["pole"] == pole])
            lines.append(f"{dim:20s} descriptions {pole}: negation {w.negation_share:.2f}, hedge {w.hedge_share:.2f}, "
                         f"{w.mean_words:.1f} words")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(sys.argv[1] if len(sys.argv) > 1 else None))
