"""Sample ids from a text file: one or more per line (commas or spaces), `#` starts a comment.
The form operators (`fusedctl unlearn --samples`) and participants (`fused-participant
--forget-samples`) name samples in."""

from __future__ import annotations

from pathlib import Path


def read_sample_ids(path: Path) -> tuple[int, ...]:
    """The file's ids, sorted, once each. Raises ValueError saying what is wrong."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read sample ids from {path}: {exc.strerror}") from exc
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        for token in line.split("#", 1)[0].replace(",", " ").split():
            if not token.isdigit():
                raise ValueError(f"{path}:{number}: {token!r} is not a sample id")
            ids.append(int(token))
    if not ids:
        raise ValueError(f"{path} lists no sample ids")
    return tuple(sorted(set(ids)))
