"""Word-language identification as a FUSED workload (an example of a user package).

`WordLanguage` is the workload (entry point `wordlang` in the `fused.workloads` group);
`fused-wordlang-prepare` builds its data from Debian's word lists.
"""

from __future__ import annotations

from fused_wordlang.data import LANGUAGE_NAMES
from fused_wordlang.model import WordClassifier, WordConfig
from fused_wordlang.workload import WordLanguage

__all__ = ["LANGUAGE_NAMES", "WordClassifier", "WordConfig", "WordLanguage"]
