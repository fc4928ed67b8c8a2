#!/usr/bin/env bash
# Keeps the contract from breaking clients silently. protos/released.txtpb is the
# contract as clients know it (a buf image, in protobuf text format so reviews
# show what changed); buf breaking compares protos/ with it.
#
#   scripts/check_breaking.sh           fail when protos/ breaks the recorded contract,
#                                       or has changes not recorded yet (make lint, CI)
#   scripts/check_breaking.sh --update  record protos/ after a compatible change;
#                                       refuses while the change is breaking
#
# BUF overrides the buf command (default: the one `make lint` installs in .buf/).
set -euo pipefail
cd "$(dirname "$0")/.."

baseline=protos/released.txtpb
read -r -a buf <<<"${BUF:-npx --yes --prefix .buf buf}"

if ! "${buf[@]}" breaking --against "$baseline"; then
    echo "protos/ breaks the released contract ($baseline): see above." >&2
    echo "Add a new package version (rag.<service>.v2) beside v1 instead; README, 'Contract'." >&2
    exit 1
fi

current=$(mktemp)
trap 'rm -f "$current"' EXIT
"${buf[@]}" build --exclude-source-info -o "$current#format=txtpb"

if [[ "${1:-}" == "--update" ]]; then
    cp "$current" "$baseline"
    echo "recorded protos/ in $baseline; commit it with the .proto change"
elif ! cmp -s "$current" "$baseline"; then
    echo "protos/ has compatible changes not recorded in $baseline:" >&2
    diff -u "$baseline" "$current" | head -40 >&2 || true
    echo "Run scripts/check_breaking.sh --update and commit $baseline." >&2
    exit 1
fi
