"""How the shell shows results (repl/render.py): modes, image paths, image protocols, paging."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from popql.repl.render import (
    detect_image_protocol,
    format_result,
    image_columns,
    inline_image,
    iterm2_image,
    kitty_image,
    pager_command,
    should_page,
    thumbnail_png,
    thumbnails_text,
)

TABLE = pa.table(
    {
        "uri": ["/data/photos/a.jpg", "s3://bucket/b.jpg"],
        "n": [2, 10],
        "label": ["x|y", None],
    }
)


def test_table_mode_aligns_and_counts() -> None:
    text = format_result(TABLE, "table", cwd="/data")
    lines = text.splitlines()
    assert lines[0].split("|")[0].strip() == "uri"
    assert "photos/a.jpg" in text and "/data/photos" not in text  # relative to cwd
    assert "s3://bucket/b.jpg" in text
    assert lines[-1] == "(2 rows)"
    # numbers right-aligned
    assert re.search(r"\|\s+2 \|", text) and re.search(r"\|\s+10 \|", text)


def test_markdown_csv_json() -> None:
    md = format_result(TABLE, "markdown", cwd="/elsewhere")
    assert md.splitlines()[:3] == [
        "| uri | n | label |",
        "| --- | ---: | --- |",
        "| /data/photos/a.jpg | 2 | x\\|y |",
    ]
    assert md.endswith("\n\n(2 rows)")
    assert format_result(TABLE, "csv").splitlines() == [
        "uri,n,label",
        "/data/photos/a.jpg,2,x|y",
        "s3://bucket/b.jpg,10,",
    ]
    rows = [json.loads(line) for line in format_result(TABLE, "json").splitlines()]
    assert rows[1] == {"uri": "s3://bucket/b.jpg", "n": 10, "label": None}
    many = pa.table({"n": list(range(50))})
    assert format_result(many, "table", max_rows=10).splitlines()[-1] == "(50 rows, 10 shown)"
    assert format_result(many, "markdown", max_rows=10).endswith("\n| 9 |\n\n(50 rows, 10 shown)")
    assert len(format_result(many, "csv", max_rows=10).splitlines()) == 51  # data: every row
    with pytest.raises(ValueError, match="unknown output mode"):
        format_result(TABLE, "xml")


def test_image_columns() -> None:
    schema = pa.schema(
        [
            ("uri", pa.string()),
            ("image", pa.string_view()),
            ("path", pa.int64()),
            ("x", pa.string()),
        ]
    )
    assert image_columns(schema) == ["uri", "image"]


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"TERM": "xterm-kitty"}, "kitty"),
        ({"KITTY_WINDOW_ID": "1", "TERM": "xterm-256color"}, "kitty"),
        ({"TERM_PROGRAM": "iTerm.app"}, "iterm2"),
        ({"TERM_PROGRAM": "WezTerm"}, "iterm2"),
        ({"LC_TERMINAL": "iTerm2"}, "iterm2"),
        ({"TERM": "xterm-256color"}, None),
        ({"TERM": "xterm-kitty", "TMUX": "/tmp/tmux-0/default,1,0"}, None),
        ({"TERM": "xterm-256color", "POPQL_IMAGES": "iterm2"}, "iterm2"),
        ({"TERM": "xterm-kitty", "POPQL_IMAGES": "off"}, None),
    ],
)
def test_detect_image_protocol(env: dict[str, str], expected: str | None) -> None:
    assert detect_image_protocol(env) == expected


def test_kitty_encoder_chunks_and_round_trips() -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes -> 13,656 base64 characters
    text = kitty_image(data, columns=16, chunk=4096)
    chunks = re.findall(r"\x1b_G([^;]*);([^\x1b]*)\x1b\\", text)
    assert len(chunks) == 4
    assert chunks[0][0] == "a=T,f=100,c=16,m=1"
    assert [c[0] for c in chunks[1:]] == ["m=1", "m=1", "m=0"]
    assert all(len(c[1]) <= 4096 for c in chunks)
    assert base64.b64decode("".join(c[1] for c in chunks)) == data
    assert kitty_image(b"x") == "\x1b_Ga=T,f=100,m=0;eA==\x1b\\"


def test_iterm2_encoder() -> None:
    text = iterm2_image(b"abc", name="a.png", width="16")
    m = re.fullmatch(r"\x1b\]1337;File=([^:]*):([^\x07]*)\x07", text)
    assert m is not None
    args = dict(kv.split("=", 1) for kv in m.group(1).split(";"))
    assert base64.b64decode(args["name"]) == b"a.png"
    assert args["size"] == "3" and args["inline"] == "1" and args["width"] == "16"
    assert base64.b64decode(m.group(2)) == b"abc"
    assert inline_image("iterm2", b"abc", name="a.png", columns=16) == text
    with pytest.raises(ValueError):
        inline_image("sixel", b"abc")


def test_thumbnails(tmp_path: Path) -> None:
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (800, 600), (0, 0, 255)).save(big)
    png = thumbnail_png(str(big), size=64)
    assert png is not None
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and max(im.size) == 64
    assert thumbnail_png(str(tmp_path / "missing.jpg")) is None
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert thumbnail_png(str(tmp_path / "bad.jpg")) is None
    assert thumbnail_png("s3://bucket/x.jpg") is None
    # a dataset's stored thumbnail is used when there is one
    stored = tmp_path / "ds" / "thumbnails" / "ab" / "abcdef.jpg"
    stored.parent.mkdir(parents=True)
    Image.new("RGB", (32, 32), (0, 255, 0)).save(stored)
    via_dataset = thumbnail_png("/nowhere.jpg", dataset=tmp_path / "ds", content_hash="abcdef")
    assert via_dataset is not None and Image.open(io.BytesIO(via_dataset)).size == (32, 32)

    table = pa.table({"uri": [str(big), str(tmp_path / "missing.jpg")], "n": [1, 2]})
    text = thumbnails_text(table, "kitty", cwd=str(tmp_path))
    assert text.count("\x1b_G") >= 1 and text.endswith(" big.png")
    assert "missing" not in text
    assert thumbnails_text(pa.table({"n": [1]}), "kitty") == ""


def test_paging_decision_and_command() -> None:
    assert not should_page("a\nb", 24, 80)
    assert should_page("\n".join(["x"] * 30), 24, 80)
    assert should_page("x" * 100, 24, 80)
    assert not should_page("x" * 100, None)
    assert pager_command({"POPQL_PAGER": "more", "PAGER": "less"}) == "more"
    assert pager_command({"PAGER": ""}) is None
    assert pager_command({"PAGER": "cat"}) == "cat"
