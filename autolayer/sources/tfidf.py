"""TF-IDF: a lexical feature source the search can choose and fuse with the neural ones.

On topic sets a bag of words is hard to beat (TF-IDF + a linear SVM reaches 97.6 % on R8),
and words are a view of the text no frozen encoder gives exactly: a natural fusion partner.
Word 1–2-grams seen in at least two training texts, the 20,000 most frequent, sublinear term
frequency, rows L2-normalised: scikit-learn's ``TfidfVectorizer`` does the work. Character
n-grams were measured and left out: with a linear SVM on the full training sets they moved
test accuracy by +0.08 pt (MR) and −0.13 pt (R8) while giving 8–12× the non-zeros per text,
and the fusion head's cost grows with those. Unlike a pretrained model TF-IDF learns from
the texts, so it is **fitted on the training
rows only** (never on validation or test rows) and its vocabulary and idf travel with a
saved classifier, as JSON and safetensors (no pickle). Its features are a sparse matrix
``[N, V]`` with one state; the fusion head projects them with a learned sparse × dense
layer, like any model's Linear+ReLU projection.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import sparse

from autolayer.errors import ConfigError, DataError
from autolayer.files import atomic_write, atomic_write_bytes
from autolayer.sources.base import FeatureSource, register_source

FORMAT = 1  # version of the saved vocabulary files
BLOCKS = {  # TfidfVectorizer settings of each block, part of the source's identity
    "word": {"analyzer": "word", "ngram_range": (1, 2), "min_df": 2, "max_features": 20000},
}
# raised with params=("models",), so that the CLI names its --models option
NO_WORDS = (
    "tfidf found no words to count in the training texts (it counts words of 2 or more "
    "letters or digits; these hold only emoji, punctuation or single letters): leave tfidf "
    "out of models"
)


@register_source("tfidf")
class TfidfSource(FeatureSource):
    """Word n-gram TF-IDF, fitted on training texts (see the module docstring)."""

    learns = True
    sparse = True
    files = ("tfidf.json", "tfidf.safetensors")

    def __init__(self, spec: str = "tfidf", *, trust_remote_code: bool = False) -> None:
        super().__init__(spec, trust_remote_code=trust_remote_code)
        self._vectorizers: dict | None = None

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return spec == "tfidf"

    @property
    def identity(self) -> str:
        """The settings, not the fitted vocabulary: a config names the method, and the
        vocabulary it was fitted to travels with the saved classifier."""
        settings = json.dumps({"format": FORMAT, "blocks": BLOCKS}, sort_keys=True)
        return "tfidf-" + hashlib.sha256(settings.encode()).hexdigest()[:16]

    @property
    def n_states(self) -> int:
        return 1

    @property
    def width(self) -> int:
        return sum(len(v.vocabulary_) for v in self._fitted().values())

    def fit(self, texts: Sequence[str]) -> TfidfSource:
        """Learn the vocabulary and idf of ``texts`` (training rows only)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = list(texts)
        vectorizers = {}
        for name, settings in BLOCKS.items():
            vec = TfidfVectorizer(sublinear_tf=True, dtype=np.float32, **settings)
            try:
                vec.fit(texts)
            except ValueError:  # every term below min_df (a tiny set), or no word at all
                vec = TfidfVectorizer(
                    sublinear_tf=True, dtype=np.float32, **{**settings, "min_df": 1}
                )
                try:
                    vec.fit(texts)
                except ValueError:
                    continue
            vectorizers[name] = vec
        if not vectorizers:
            raise DataError(NO_WORDS, params=("models",))
        self._vectorizers = vectorizers
        return self

    def check_texts(self, texts: Sequence[str]) -> None:
        """Refuse training texts :meth:`fit` would find no word in, before any other work:
        cheap (the tokenizer alone, stopping at the first text with a word), so a pool
        can be checked before its other models spend an hour being extracted."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        analyzers = [TfidfVectorizer(**settings).build_analyzer() for settings in BLOCKS.values()]
        if not any(analyze(text) for text in texts for analyze in analyzers):
            raise DataError(NO_WORDS, params=("models",))

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """``[N, V]`` float32 CSR: the blocks side by side, scaled so each row's norm is ≤ 1
        (0 for a text with no known term)."""
        blocks = [v.transform(list(texts)) for v in self._fitted().values()]
        out = sparse.hstack(blocks, format="csr", dtype=np.float32) / np.sqrt(len(blocks))
        return sparse.csr_matrix(out, dtype=np.float32)

    def embed(self, texts, layers, **_settings) -> np.ndarray:
        raise ConfigError("tfidf features are sparse: use transform")

    def parameters(self, layer: int) -> int:
        return 0  # nothing pretrained; the head's projection is priced with the head

    def memory_mb(self, layer: int) -> float:
        """The vocabulary: its terms and one idf float each."""
        vocab = [t for v in self._fitted().values() for t in v.vocabulary_]
        return (sum(len(t) for t in vocab) + 12 * len(vocab)) / 2**20

    def latency_fraction(self, layer: int) -> float:
        return 1.0

    def save(self, directory: Path) -> None:
        """``tfidf.json`` (settings and terms by column) and ``tfidf.safetensors`` (idf)."""
        from safetensors.numpy import save_file

        fitted = self._fitted()
        terms = {
            name: sorted(v.vocabulary_, key=v.vocabulary_.__getitem__) for name, v in fitted.items()
        }
        record = {"format": FORMAT, "identity": self.identity, "blocks": BLOCKS, "terms": terms}
        atomic_write_bytes(directory / "tfidf.json", json.dumps(record).encode())
        idf = {name: np.asarray(v.idf_, dtype=np.float64) for name, v in fitted.items()}
        atomic_write(directory / "tfidf.safetensors", lambda path: save_file(idf, path))

    @classmethod
    def load(cls, directory: Path) -> TfidfSource:
        """The source :meth:`save` wrote, refusing damaged files and files of another
        format or settings with a one-line error."""
        from safetensors.numpy import load_file

        path = directory / "tfidf.json"
        try:
            record = json.loads(path.read_text())
            idf = load_file(str(directory / "tfidf.safetensors"))
        except Exception as exc:  # noqa: BLE001 - json, OS and safetensors errors alike
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{path}: unreadable tfidf vocabulary ({first})") from None
        source = cls()
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ConfigError(f"{path} was written by another tfidf version")
        if record.get("identity") != source.identity:
            raise ConfigError(f"{path} was written with other tfidf settings")
        try:
            source._vectorizers = {
                name: _vectorizer(name, terms, idf[name]) for name, terms in record["terms"].items()
            }
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(f"{path}: damaged tfidf vocabulary ({type(exc).__name__})") from None
        return source

    def _fitted(self) -> dict:
        if self._vectorizers is None:
            raise ConfigError("tfidf is not fitted: fit it on training texts first")
        return self._vectorizers


def _vectorizer(block: str, terms: list[str], idf: np.ndarray):
    """A fitted ``TfidfVectorizer`` rebuilt from its terms (by column) and idf."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(terms) != len(idf):
        raise ValueError("terms and idf differ in length")
    vec = TfidfVectorizer(
        sublinear_tf=True,
        dtype=np.float32,
        vocabulary={t: i for i, t in enumerate(terms)},
        **BLOCKS[block],
    )
    vec.idf_ = idf
    return vec
