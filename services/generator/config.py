from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.limits import MAX_HISTORY_TURNS
from services.common.registry import GENERATOR
from services.common.settings import ServerSettings
from services.generator.backends.extractive import DEFAULT_MAX_UNMENTIONED, DEFAULT_MIN_OVERLAP
from services.generator.context import (
    DEFAULT_DEDUP_THRESHOLD,
    DEFAULT_HISTORY_MAX_TURNS,
    DEFAULT_HISTORY_SHARE,
)
from services.generator.tokens import tokenizer_file


class GeneratorSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix=GENERATOR.env_prefix)

    port: int = Field(GENERATOR.port, ge=0, le=65535)
    # "extractive" needs no model service; "openai" speaks to any
    # OpenAI-compatible server (OpenAI, vLLM, llama.cpp server, Ollama).
    backend: Literal["extractive", "openai"] = "extractive"
    openai_base_url: str | None = Field(
        None, validation_alias=AliasChoices("GENERATOR_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    openai_api_key: SecretStr = Field(
        SecretStr("unused"), validation_alias=AliasChoices("GENERATOR_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_model: str = "gpt-4o-mini"
    openai_timeout_s: float = Field(60.0, gt=0)
    # The openai client retries 429, 5xx and connection errors with backoff, never other 4xx.
    openai_max_retries: int = Field(2, ge=0, le=10)
    default_max_tokens: int = Field(512, ge=1)
    # Extractive backend: least share of the question's terms a sentence must hold to
    # answer; below it the answer is "cannot answer". The default was chosen on SciFact
    # (services/generator/backends/extractive.py, bench/extractive_calibration.py).
    extractive_min_overlap: float = Field(DEFAULT_MIN_OVERLAP, gt=0, le=1)
    # Extractive backend: most of the question's weight that may be in terms no source
    # mentions; beyond it the sources are about something else and it cannot answer.
    extractive_max_unmentioned: float = Field(DEFAULT_MAX_UNMENTIONED, ge=0, le=1)

    # Context assembly (services/generator/context.py). The LLM's context window in
    # tokens: prompt and answer (max_tokens) together. Unused by the extractive backend.
    context_window_tokens: int = Field(4096, ge=256)
    # tokenizer.json (or a folder holding it) to count prompt tokens with, offline.
    # Unset: the embedding model's tokenizer, an approximation (see tokens.py).
    tokenizer_path: Path | None = None
    # Share added to every token count, for the gap between the counting tokenizer
    # and the LLM's own; 0 when tokenizer_path is the LLM's tokenizer.
    token_margin: float = Field(0.15, ge=0, le=1)
    # Sources whose word sets are at least this similar (Jaccard) to a better one are dropped.
    dedup_threshold: float = Field(DEFAULT_DEDUP_THRESHOLD, gt=0, le=1)
    # The newest prior turns sent to the LLM, and the most of the prompt budget they may take.
    history_max_turns: int = Field(DEFAULT_HISTORY_MAX_TURNS, ge=0, le=MAX_HISTORY_TURNS)
    history_share: float = Field(DEFAULT_HISTORY_SHARE, ge=0, le=1)

    @field_validator("tokenizer_path")
    @classmethod
    def _tokenizer_exists(cls, path: Path | None) -> Path | None:
        if path is not None:
            try:
                tokenizer_file(path)
            except FileNotFoundError as error:
                raise ValueError(f"{error}; give a tokenizer.json or a folder holding one") from error
        return path

    @model_validator(mode="after")
    def _answer_fits(self) -> Self:
        if self.backend == "openai" and self.default_max_tokens >= self.context_window_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be less than "
                f"context_window_tokens ({self.context_window_tokens}): the prompt needs room too"
            )
        return self
