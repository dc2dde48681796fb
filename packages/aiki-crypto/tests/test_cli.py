from __future__ import annotations

import re
import subprocess
import sys

import pytest

from aiki_core import CodecContext
from aiki_crypto import AesGcmCodec, KeyRing
from aiki_crypto.__main__ import main

ENTRY = re.compile(r"(k3):([A-Za-z0-9_-]{43})\n")


def test_new_key_prints_a_ring_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-key", "k3"]) == 0
    out = capsys.readouterr().out
    assert ENTRY.fullmatch(out)
    ring = KeyRing.parse(out)
    assert ring.key_ids == ("k3",)
    codec = AesGcmCodec(ring)
    context = CodecContext("r-1", "input")
    assert codec.decode(codec.encode({"ok": True}, context), context) == {"ok": True}


def test_each_new_key_is_new(capsys: pytest.CaptureFixture[str]) -> None:
    main(["new-key", "k3"])
    main(["new-key", "k3"])
    first, second = capsys.readouterr().out.splitlines()
    assert first != second


@pytest.mark.parametrize("argv", [["new-key", "a:b"], ["new-key", "x" * 65], ["new-key"], []])
def test_bad_arguments_are_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert capsys.readouterr().out == ""


def test_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aiki_crypto", "new-key", "k3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert ENTRY.fullmatch(done.stdout)
