from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServerSettings


class GeneratorSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="GENERATOR_")

    port: int = Field(50053, ge=0, le=65535)
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
    # Extractive backend: least share of the question's terms a sentence must hold.
    extractive_min_overlap: float = Field(0.4, gt=0, le=1)
