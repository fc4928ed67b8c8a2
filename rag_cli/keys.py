"""`rag keys`: create, list and revoke the gateway's API keys (sending one: rag_cli/client.py).

The commands edit the keys file (GATEWAY_API_KEYS_FILE) through gateway/keys.py,
whose create_key and revoke_key hold its lock, so two edits at once both land; a
running gateway picks the change up on its next call. In Kubernetes, put the
file into the Secret the gateway mounts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway import keys
from rag_cli.terminal import echo


def register(commands: Any, default_file: Path | None) -> None:
    """Adds `keys create|list|revoke` to the `rag` parser's subcommands; `--file` defaults to default_file."""
    group = commands.add_parser("keys", help="manage the gateway's API keys (a file of hashed keys)")
    actions = group.add_subparsers(dest="keys_command", required=True)

    def file_option(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--file", type=Path, default=default_file, required=default_file is None, help="keys file (JSON)"
        )

    command = actions.add_parser("create", help="add a key; prints it once (only its hash is stored)")
    file_option(command)
    command.add_argument(
        "--namespace",
        dest="key_namespaces",
        action="append",
        required=True,
        help="a namespace the key may use; repeat for more, '*' for all",
    )
    command.add_argument("--id", dest="key_id", help="the key's name (default: random)")
    command.set_defaults(run=create)

    command = actions.add_parser("list", help="ids, namespaces, creation and revocation (never keys)")
    file_option(command)
    command.set_defaults(run=list_keys)

    command = actions.add_parser("revoke", help="revoke a key by id")
    file_option(command)
    command.add_argument("key_id", metavar="ID")
    command.set_defaults(run=revoke)


def create(args: argparse.Namespace) -> int:
    key = keys.create_key(args.file, tuple(args.key_namespaces), args.key_id)
    echo(key)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    for entry in keys.read_keys(args.file).values():
        state = "revoked" if entry.revoked else "active"
        echo(f"{entry.id}\t{','.join(entry.namespaces)}\t{entry.created_at}\t{state}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    keys.revoke_key(args.file, args.key_id)
    echo(f"revoked {args.key_id}")
    return 0
