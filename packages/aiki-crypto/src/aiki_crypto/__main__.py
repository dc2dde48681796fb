"""`python -m aiki_crypto new-key <id>`: print a new key ring entry."""

from __future__ import annotations

import argparse
import sys

from aiki_crypto._keyring import KeyRing, encode_key, is_key_id


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m aiki_crypto")
    commands = parser.add_subparsers(dest="command", required=True)
    new_key = commands.add_parser(
        "new-key",
        help="print 'id:<base64url key>', a new random AES-256 key to put first in AIKI_KEYS",
    )
    new_key.add_argument("key_id", help="the new key's id: 1 to 64 of A-Z a-z 0-9 _ . -")
    args = parser.parse_args(argv)
    if not is_key_id(args.key_id):
        parser.error(f"key id {args.key_id!r} is not 1 to 64 of A-Z a-z 0-9 _ . -")
    sys.stdout.write(f"{args.key_id}:{encode_key(KeyRing.generate_key())}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
