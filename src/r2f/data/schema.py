"""The records r2f reads: TOFU-shaped question–answer items, and documents (forget data given as plain text)."""

from __future__ import annotations

import unicodedata
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


#: Unicode categories with nothing to learn or forget: separators, control and format characters
#: (zero-width spaces, BOM, bidi marks …).
_INVISIBLE = {"Zs", "Zl", "Zp", "Cc", "Cf"}


def visible(text: str) -> bool:
    """Whether ``text`` holds at least one character that is not whitespace-like or invisible."""
    return any(unicodedata.category(c) not in _INVISIBLE for c in text)


class QAItem(BaseModel):
    """One question–answer pair with its views.

    ``paraphrased_question`` may be given as one string (TOFU) or a list (r2f's world);
    it is always stored as a list. Extra fields (``author``, ``split`` …) are kept.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    paraphrased_question: list[str] = Field(default_factory=list)
    paraphrased_answer: str | None = None
    perturbed_answer: list[str] = Field(default_factory=list)

    @field_validator("paraphrased_question", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("question", "answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not visible(value):
            raise ValueError("must not be blank (only whitespace or invisible characters)")
        return value

    def views(self, k: int) -> list[str]:
        """The first ``k`` question views: the original question, then its paraphrases."""
        return ([self.question] + list(self.paraphrased_question))[: max(1, k)]

    @property
    def author(self) -> str | None:
        return (self.model_extra or {}).get("author")


class Document(BaseModel):
    """A forget document: its ``text`` (unlearned with the LM loss on every token, no question/answer split) and,
    optionally, ``paraphrases`` of the whole text (extra views; docs/world.md § Documents). Extra fields are kept.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    text: str = Field(min_length=1)
    paraphrases: list[str] = Field(default_factory=list)

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not visible(value):
            raise ValueError("must not be blank (only whitespace or invisible characters)")
        return value

    @field_validator("paraphrases")
    @classmethod
    def _paraphrases_not_blank(cls, value: list[str]) -> list[str]:
        for i, text in enumerate(value):
            if not visible(text):
                raise ValueError(f"paraphrase {i} must not be blank (only whitespace or invisible characters)")
        return value
