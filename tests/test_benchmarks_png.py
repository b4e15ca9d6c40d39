"""The PNG writer of the benchmark chart: encoding read back, drawing, the font and the chart."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from benchmarks import png, report

SIGNATURE = b"\x89PNG\r\n\x1a\n"
WHITE = (255, 255, 255)
BLUE = (0x2B, 0x6C, 0xB0)
RED = (0xC5, 0x30, 0x30)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, checking lengths and CRCs."""
    assert data[:8] == SIGNATURE
    chunks = []
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        assert len(payload) == length, "chunk runs past the end of the file"
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF, f"bad CRC of {kind!r}"
        chunks.append((kind, payload))
        pos += 12 + length
    assert pos == len(data)
    return chunks


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode(data: bytes) -> NDArray[np.uint8]:
    """An independent reader of 8-bit RGB PNG files (every filter type, not only 0)."""
    chunks = _chunks(data)
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    assert chunks[-1][1] == b""
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(payload for kind, payload in chunks if kind == b"IDAT"))
    stride = 3 * width
    assert len(raw) == height * (stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, row = line[0], bytearray(line[1:])
        for i in range(stride if kind else 0):  # filter type 0: the bytes are the pixels
            left = row[i - 3] if i >= 3 else 0
            up = previous[i]
            upleft = previous[i - 3] if i >= 3 else 0
            predictor = (0, left, up, (left + up) // 2, _paeth(left, up, upleft))[kind]
            row[i] = (row[i] + predictor) & 0xFF
        out[y] = np.frombuffer(bytes(row), dtype=np.uint8)
        previous = row
    return out.reshape(height, width, 3)


def _has(image: NDArray[np.uint8], color: tuple[int, int, int]) -> bool:
    return bool(np.all(image == np.array(color, dtype=np.uint8), axis=-1).any())


# ------------------------------------------------------------------------------ encoding


def test_encoded_png_reads_back_pixel_for_pixel() -> None:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(13, 21, 3), dtype=np.uint8)
    data = png.encode_png(image)
    assert data.startswith(SIGNATURE)
    chunks = _chunks(data)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">II", chunks[0][1][:8]) == (21, 13)
    raw = zlib.decompress(chunks[1][1])
    assert all(raw[y * (21 * 3 + 1)] == 0 for y in range(13))  # filter type 0 on every row
    np.testing.assert_array_equal(decode(data), image)


def test_decoder_checks_crc() -> None:
    data = bytearray(png.encode_png(np.zeros((2, 2, 3), dtype=np.uint8)))
    data[20] ^= 1  # inside IHDR's payload
    with pytest.raises(AssertionError, match="bad CRC"):
        _chunks(bytes(data))


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 4), dtype=np.uint8), np.zeros((4, 4, 3), dtype=np.float32), np.zeros((0, 4, 3), np.uint8)],
)
def test_encoder_refuses_what_is_not_an_rgb_image(image: NDArray[Any]) -> None:
    with pytest.raises(ValueError):
        png.encode_png(image)


def test_canvas_saves_what_it_holds(tmp_path: Path) -> None:
    canvas = png.Canvas(7, 5, (1, 2, 3))
    canvas.fill_rect(2, 1, 4, 3, (200, 100, 50))
    path = canvas.save(tmp_path / "x.png")
    np.testing.assert_array_equal(decode(path.read_bytes()), canvas.pixels)
    assert (canvas.width, canvas.height) == (7, 5)


# ------------------------------------------------------------------------------ drawing


def test_rectangle_fills_exactly_its_pixels() -> None:
    canvas = png.Canvas(30, 20)
    canvas.fill_rect(5, 3, 12, 9, BLUE)
    inside = np.zeros((20, 30), dtype=bool)
    inside[3:9, 5:12] = True
    pixels = canvas.pixels
    assert np.all(pixels[inside] == BLUE)
    assert np.all(pixels[~inside] == WHITE)


def test_drawing_is_clipped_to_the_image() -> None:
    canvas = png.Canvas(10, 10)
    canvas.fill_rect(-5, -5, 3, 2, RED)
    canvas.fill_rect(8, 8, 50, 50, BLUE)
    canvas.fill_rect(20, 20, 30, 30, BLUE)  # wholly outside: nothing
    red = np.all(canvas.pixels == RED, axis=-1)
    blue = np.all(canvas.pixels == BLUE, axis=-1)
    assert red.sum() == 6 and red[:2, :3].all()
    assert blue.sum() == 4 and blue[8:, 8:].all()
    canvas = png.Canvas(10, 10)
    canvas.text(-3, -4, "W", RED)  # partly outside: the part inside is drawn
    canvas.text(200, -50, "far away", RED)
    whole = png.Canvas(20, 20)
    whole.text(2, 1, "W", RED)
    np.testing.assert_array_equal(canvas.pixels[:6, :3], whole.pixels[5:11, 5:8])


def test_lines_have_their_width() -> None:
    canvas = png.Canvas(20, 20)
    canvas.vline(4, 15, 2, RED, width=3)  # ends in any order, both included
    canvas.hline(10, 18, 12, BLUE)
    red = np.all(canvas.pixels == RED, axis=-1)
    blue = np.all(canvas.pixels == BLUE, axis=-1)
    assert red.sum() == 3 * 14 and red[2:16, 4:7].all()
    assert blue.sum() == 7 and blue[10, 12:19].all()


def test_text_changes_pixels_only_inside_its_box() -> None:
    canvas = png.Canvas(120, 40)
    box = canvas.text(10, 8, "Hi (5.32x)", (0, 0, 0))
    x0, y0, x1, y1 = box
    assert (x1 - x0, y1 - y0) == png.text_size("Hi (5.32x)")
    changed = np.any(canvas.pixels != WHITE, axis=-1)
    assert changed.any()
    outside = changed.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any()


def test_text_scale_doubles_the_glyphs() -> None:
    small, big = png.Canvas(60, 30), png.Canvas(60, 30)
    small.text(0, 0, "Ag", (0, 0, 0))
    big.text(0, 0, "Ag", (0, 0, 0), scale=2)
    ink_small = np.any(small.pixels != WHITE, axis=-1)
    ink_big = np.any(big.pixels != WHITE, axis=-1)
    assert ink_big.sum() == 4 * ink_small.sum()
    np.testing.assert_array_equal(ink_big[::2, ::2], ink_small[:15, :30])


def test_different_strings_render_differently() -> None:
    def render(text: str) -> NDArray[np.uint8]:
        canvas = png.Canvas(80, 12)
        canvas.text(1, 1, text, (0, 0, 0))
        return canvas.pixels

    assert not np.array_equal(render("0.5x"), render("0.6x"))
    assert not np.array_equal(render("lI1"), render("Il1"))
    np.testing.assert_array_equal(render("deker"), render("deker"))


def test_right_aligned_and_centred_text() -> None:
    canvas = png.Canvas(100, 20)
    width = png.text_size("abc")[0]
    assert canvas.text_right(90, 2, "abc", (0, 0, 0))[0::2] == (90 - width, 90)
    x0, _, x1, _ = canvas.text_center(50, 2, "abcd", (0, 0, 0))
    assert abs((x0 + x1) / 2 - 50) <= 0.5
    ink = np.flatnonzero(np.any(canvas.pixels != WHITE, axis=(0, 2)))
    assert ink.max() == 89


def test_every_printable_character_has_its_own_glyph() -> None:
    glyphs = {}
    for code in range(33, 127):
        bitmap = png.glyph(chr(code))
        assert bitmap.shape == (png.GLYPH_HEIGHT, png.GLYPH_WIDTH)
        assert bitmap.any(), f"empty glyph for {chr(code)!r}"
        glyphs[chr(code)] = bitmap.tobytes()
    assert not png.glyph(" ").any()
    assert len(set(glyphs.values())) == len(glyphs), "two characters share a glyph"
    assert png.glyph("µ").any()  # anything else: a box, not nothing
    assert png.glyph("µ").tobytes() not in glyphs.values()


def test_hex_color() -> None:
    assert png.hex_color("#2b6cb0") == BLUE
    with pytest.raises(ValueError):
        png.hex_color("#fff")


# ------------------------------------------------------------------------------ chart


def _item(scenario: str, what: str, ratio: float, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "summary",
        "scenario": scenario,
        "name": what,
        "what": what,
        "time_vs_h5py": ratio,
        **extra,
    }


def _summary(legacy: bool = True, targets: bool = True) -> list[dict[str, Any]]:
    old = {"legacy_time_vs_h5py": 3.2} if legacy else {}
    return [
        _item(
            "a", "new Array: first write", 1.42, **old, **({"target": "<= 1.5x h5py time"} if targets else {})
        ),
        _item(
            "a",
            "random row reads",
            0.41,
            deker_rate=5000.0,
            **({"target": ">= 0.6x h5py rate"} if targets else {}),
        ),
        _item("b", "region write", 7.39, **old),
        _item("e", "peak memory", 1.0, deker_memory_ratio=1.02),  # not drawn: not a time
        {"kind": "summary", "scenario": "d", "name": "iterate", "what": "iterate"},  # no h5py ratio
    ]


def test_chart_is_a_png_of_the_drawn_rows(tmp_path: Path) -> None:
    summary = _summary()
    rows = report._chart_rows(summary)
    assert [r[0] for r in rows] == ["(a) new Array: first write", "(a) random row reads", "(b) region write"]
    (tmp_path / "performance.svg").write_text("<svg/>")  # the chart of an earlier version
    path = report.write_chart(summary, tmp_path)
    assert path == tmp_path / "performance.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["performance.png"]
    image = decode(path.read_bytes())
    assert image.shape[0] >= 50 + 34 * len(rows) + 40 and image.shape[1] >= 800
    assert _has(image, BLUE) and _has(image, RED) and _has(image, (0xAA, 0xAA, 0xAA))
    # the deker bars, top to bottom (the legend swatch is 12 pixels): one start, lengths by ratio
    blue = np.all(image == BLUE, axis=-1)
    bars = [row for row in blue if row.sum() > 20]
    assert len({int(np.argmax(row)) for row in bars}) == 1
    lengths = list(dict.fromkeys(int(row.sum()) for row in bars))
    assert len(lengths) == 3 and lengths[1] < lengths[0] < lengths[2]  # 1.42, 0.41, 7.39


def test_chart_without_targets_or_legacy_has_no_red_or_grey(tmp_path: Path) -> None:
    image = decode(report.write_chart(_summary(legacy=False, targets=False), tmp_path).read_bytes())
    assert _has(image, BLUE)
    assert not _has(image, RED) and not _has(image, (0xAA, 0xAA, 0xAA))


def test_bar_length_is_logarithmic(tmp_path: Path) -> None:
    summary = [_item("a", "one", 1.0), _item("a", "ten", 10.0), _item("a", "hundred", 100.0)]
    image = decode(report.write_chart(summary, tmp_path).read_bytes())
    blue = np.all(image == BLUE, axis=-1)
    bars = sorted({int(row.sum()) for row in blue if row.sum() > 20})
    assert len(bars) == 3
    assert abs((bars[2] - bars[1]) - (bars[1] - bars[0])) <= 1  # equal steps per decade


def test_chart_of_nothing_is_still_an_image(tmp_path: Path) -> None:
    image = decode(report.write_chart([], tmp_path).read_bytes())
    assert image.shape[2] == 3 and _has(image, BLUE)  # the legend
