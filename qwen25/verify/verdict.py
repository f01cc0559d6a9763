"""What every verifier returns: passed or not, and why, in a form that goes into JSONL provenance as is."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Verdict:
    passed: bool
    reason: str  # one line: what was checked and what was found
    status: str = ""  # verifier-specific class of outcome, e.g. "pass", "fail", "timeout", "error"
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.status:
            self.status = "pass" if self.passed else "fail"

    def to_dict(self) -> dict:
        return asdict(self)
