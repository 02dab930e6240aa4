"""Keep evaluation questions out of training data: word n-gram overlap with the GSM8k test questions."""

from __future__ import annotations

import re

NGRAM = 13  # the usual contamination n-gram length (GPT-3 paper); every GSM8k test question has >= 15 words


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class NgramIndex:
    """Flags a document that shares any NGRAM-word sequence with one of the reference texts."""

    def __init__(self, references: list[str], n: int = NGRAM) -> None:
        self.n = n
        self.ngrams: set[str] = set()
        self.whole: list[str] = []  # references shorter than n words must appear whole
        for reference in references:
            tokens = words(reference)
            if len(tokens) < n:
                self.whole.append(" " + " ".join(tokens) + " ")
            for i in range(len(tokens) - n + 1):
                self.ngrams.add(" ".join(tokens[i : i + n]))

    def __call__(self, text: str) -> bool:
        tokens = words(text)
        if any(" ".join(tokens[i : i + self.n]) in self.ngrams for i in range(len(tokens) - self.n + 1)):
            return True
        if self.whole:
            joined = " " + " ".join(tokens) + " "
            return any(reference in joined for reference in self.whole)
        return False
