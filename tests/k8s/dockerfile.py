"""The Dockerfile, parsed into its build arguments, stages and heredocs."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from tests.k8s.rendering import REPO


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, instruction: str) -> str | None:
        values = [args for name, args in self.instructions if name == instruction]
        return values[-1] if values else None

    @property
    def user(self) -> str:
        user = self.last("USER")
        assert user is not None, f"stage {self.name} sets no USER"
        return user

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for name, args in self.instructions:
            if name == "ENV":
                for pair in shlex.split(args):
                    key, _, value = pair.partition("=")
                    env[key] = value
        return env


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: dict[str, Stage]
    heredocs: list[str]

    def stage(self, name: str) -> Stage:
        assert name in self.stages, f"the Dockerfile has no stage {name!r}"
        return self.stages[name]

    def ancestry(self, name: str) -> list[str]:
        chain = [name]
        while self.stages[chain[-1]].base in self.stages:
            chain.append(self.stages[chain[-1]].base)
        return chain


def parse_dockerfile(text: str) -> Dockerfile:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    heredocs: list[str] = []
    current: Stage | None = None
    lines = iter(text.splitlines())

    def logical_lines() -> Iterator[str]:
        buffer = ""
        for line in lines:
            if not buffer and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.rstrip().endswith("\\"):
                buffer += line.rstrip()[:-1] + " "
                continue
            yield buffer + line
            buffer = ""

    for line in logical_lines():
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        heredoc = re.search(r"<<-?'?(\w+)'?", rest)
        if heredoc:
            body = []
            for body_line in lines:
                if body_line == heredoc[1]:
                    break
                body.append(body_line)
            heredocs.append("\n".join(body) + "\n")
        if instruction == "ARG" and current is None:
            key, _, value = rest.partition("=")
            args[key] = value
        elif instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), flags=re.IGNORECASE)
            assert match, f"every FROM names its stage: {line}"
            current = Stage(match[2], match[1])
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((instruction, rest.strip()))
    return Dockerfile(args, stages, heredocs)


def project_version() -> str:
    version: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return version


def under(path: str, directory: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(directory))
