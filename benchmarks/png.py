"""A tiny raster canvas and PNG encoder (standard library and numpy only).

The benchmark chart is drawn on a :class:`Canvas`: an RGB ``uint8`` numpy image with helpers to
fill rectangles, draw horizontal and vertical lines and write text in an embedded 5 x 9 bitmap
font (printable ASCII; capitals and digits are 7 pixels high, two more rows for descenders).
:func:`encode_png` turns the image into the bytes of an 8-bit RGB PNG file.
"""

from __future__ import annotations

import binascii
import struct
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ADVANCE",
    "GLYPH_HEIGHT",
    "GLYPH_WIDTH",
    "Canvas",
    "Color",
    "encode_png",
    "glyph",
    "hex_color",
    "text_size",
]

Color = tuple[int, int, int]
"""An RGB colour, each component 0-255."""

GLYPH_WIDTH = 5
"""Width of a glyph in pixels (at scale 1)."""
GLYPH_HEIGHT = 9
"""Height of a glyph in pixels (at scale 1): 7 rows above the baseline, 2 below."""
ADVANCE = GLYPH_WIDTH + 1
"""Horizontal distance from one character to the next (at scale 1)."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# One glyph per printable ASCII character: rows from the top, "#" is ink, "." is paper.  Rows
# left out at the end (descender rows 7 and 8 of most glyphs) are blank.
_FONT: dict[str, str] = {
    " ": "",
    "!": "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..",
    '"': ".#.#. .#.#. .#.#.",
    "#": ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.",
    "$": "..#.. .#### #.#.. .###. ..#.# ####. ..#..",
    "%": "##... ##..# ...#. ..#.. .#... #..## ...##",
    "&": ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#",
    "'": "..#.. ..#.. ..#..",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "*": "..... ..#.. #.#.# .###. #.#.# ..#..",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#..",
    ",": "..... ..... ..... ..... ..... .##.. .##.. ..#.. .#...",
    "-": "..... ..... ..... #####",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    "/": "..... ....# ...#. ..#.. .#... #....",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": ".###. #...# ....# ..##. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    ":": "..... .##.. .##.. ..... .##.. .##..",
    ";": "..... .##.. .##.. ..... .##.. .##.. ..#.. .#...",
    "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    "=": "..... ..... ##### ..... #####",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    "@": ".###. #...# #.### #.#.# #.### #.... .####",
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "###.. #..#. #...# #...# #...# #..#. ###..",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "[": ".###. .#... .#... .#... .#... .#... .###.",
    "\\": "..... #.... .#... ..#.. ...#. ....#",
    "]": ".###. ...#. ...#. ...#. ...#. ...#. .###.",
    "^": "..#.. .#.#. #...#",
    "_": "..... ..... ..... ..... ..... ..... ..... #####",
    "`": ".#... ..#.. ...#.",
    "a": "..... ..... .###. ....# .#### #...# .####",
    "b": "#.... #.... #.##. ##..# #...# #...# ####.",
    "c": "..... ..... .###. #.... #.... #...# .###.",
    "d": "....# ....# .##.# #..## #...# #...# .####",
    "e": "..... ..... .###. #...# ##### #.... .###.",
    "f": "..##. .#..# .#... ###.. .#... .#... .#...",
    "g": "..... ..... .#### #...# #...# #...# .#### ....# .###.",
    "h": "#.... #.... #.##. ##..# #...# #...# #...#",
    "i": "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.",
    "j": "...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##..",
    "k": "#.... #.... #..#. #.#.. ##... #.#.. #..#.",
    "l": ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "m": "..... ..... ##.#. #.#.# #.#.# #.#.# #.#.#",
    "n": "..... ..... #.##. ##..# #...# #...# #...#",
    "o": "..... ..... .###. #...# #...# #...# .###.",
    "p": "..... ..... ####. #...# #...# #...# ####. #.... #....",
    "q": "..... ..... .#### #...# #...# #...# .#### ....# ....#",
    "r": "..... ..... #.##. ##..# #.... #.... #....",
    "s": "..... ..... .#### #.... .###. ....# ####.",
    "t": ".#... .#... ###.. .#... .#... .#..# ..##.",
    "u": "..... ..... #...# #...# #...# #..## .##.#",
    "v": "..... ..... #...# #...# #...# .#.#. ..#..",
    "w": "..... ..... #...# #...# #.#.# #.#.# .#.#.",
    "x": "..... ..... #...# .#.#. ..#.. .#.#. #...#",
    "y": "..... ..... #...# #...# #...# #...# .#### ....# .###.",
    "z": "..... ..... ##### ...#. ..#.. .#... #####",
    "{": "...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.",
    "|": "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "}": ".#... ..#.. ..#.. ...#. ..#.. ..#.. .#...",
    "~": "..... ..... .#... #.#.# ...#.",
}
# Drawn for any character without a glyph: a hollow box.
_MISSING = "##### #...# #...# #...# #...# #...# #####"


def _parse(rows: str) -> NDArray[np.bool_]:
    bitmap = np.zeros((GLYPH_HEIGHT, GLYPH_WIDTH), dtype=bool)
    for y, row in enumerate(rows.split()):
        if len(row) != GLYPH_WIDTH or set(row) - {"#", "."}:
            raise ValueError(f"bad glyph row {row!r}")
        bitmap[y] = [c == "#" for c in row]
    bitmap.flags.writeable = False
    return bitmap


_GLYPHS: dict[str, NDArray[np.bool_]] = {char: _parse(rows) for char, rows in _FONT.items()}
_MISSING_GLYPH = _parse(_MISSING)


def glyph(char: str) -> NDArray[np.bool_]:
    """The bitmap of one character.

    Parameters
    ----------
    char : str
        One character; characters outside printable ASCII are drawn as a hollow box.

    Returns
    -------
    numpy.ndarray
        A read-only ``(GLYPH_HEIGHT, GLYPH_WIDTH)`` boolean array, ``True`` where there is ink.
    """
    return _GLYPHS.get(char, _MISSING_GLYPH)


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """Width and height in pixels of ``text`` drawn by :meth:`Canvas.text`.

    Parameters
    ----------
    text : str
        One line of text.
    scale : int
        Size of a font pixel in image pixels.

    Returns
    -------
    tuple of int
        ``(width, height)``; the width is 0 for an empty string.
    """
    if not text:
        return 0, GLYPH_HEIGHT * scale
    return (len(text) * ADVANCE - 1) * scale, GLYPH_HEIGHT * scale


def hex_color(text: str) -> Color:
    """The colour of a ``#rrggbb`` string.

    Parameters
    ----------
    text : str
        Such as ``"#2b6cb0"``.

    Returns
    -------
    Color
        The ``(red, green, blue)`` components.
    """
    value = text.removeprefix("#")
    if len(value) != 6:
        raise ValueError(f"not a #rrggbb colour: {text!r}")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = binascii.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(image: NDArray[np.uint8]) -> bytes:
    """The bytes of a PNG file holding ``image``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(height, width, 3)`` array of ``uint8`` RGB pixels, row 0 at the top.

    Returns
    -------
    bytes
        An 8-bit RGB PNG (no filtering: filter type 0 on every row; zlib level 9).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a (height, width, 3) uint8 image, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError("a PNG image has at least one pixel")
    scanlines = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # first byte of a row: filter 0
    scanlines[:, 1:] = image.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # depth 8, colour type 2 (RGB)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 9))
        + _chunk(b"IEND", b"")
    )


class Canvas:
    """An RGB image to draw on; coordinates are pixels, x to the right, y down from the top left.

    Everything drawn is clipped to the image.

    Parameters
    ----------
    width, height : int
        Size of the image in pixels.
    background : Color
        Colour every pixel starts with.
    """

    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"canvas size must be positive, got {width} x {height}")
        self.pixels: NDArray[np.uint8] = np.empty((height, width, 3), dtype=np.uint8)
        self.pixels[:, :] = background

    @property
    def width(self) -> int:
        """Width of the image in pixels."""
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        """Height of the image in pixels."""
        return int(self.pixels.shape[0])

    def fill_rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Paint the pixels ``x0 <= x < x1``, ``y0 <= y < y1``.

        Parameters
        ----------
        x0, y0, x1, y1 : int
            Corners; nothing is drawn when ``x1 <= x0`` or ``y1 <= y0``.
        color : Color
            Fill colour.
        """
        x0, x1 = max(x0, 0), min(x1, self.width)
        y0, y1 = max(y0, 0), min(y1, self.height)
        if x0 < x1 and y0 < y1:
            self.pixels[y0:y1, x0:x1] = color

    def vline(self, x: int, y0: int, y1: int, color: Color, width: int = 1) -> None:
        """Draw a vertical line from ``y0`` to ``y1`` (both included).

        Parameters
        ----------
        x : int
            Column of the line; a wider line grows to the right (``x`` to ``x + width - 1``).
        y0, y1 : int
            Ends of the line, in any order.
        color : Color
            Line colour.
        width : int
            Thickness in pixels.
        """
        top, bottom = min(y0, y1), max(y0, y1)
        self.fill_rect(x, top, x + width, bottom + 1, color)

    def hline(self, y: int, x0: int, x1: int, color: Color, width: int = 1) -> None:
        """Draw a horizontal line from ``x0`` to ``x1`` (both included).

        Parameters
        ----------
        y : int
            Row of the line; a wider line grows downwards (``y`` to ``y + width - 1``).
        x0, x1 : int
            Ends of the line, in any order.
        color : Color
            Line colour.
        width : int
            Thickness in pixels.
        """
        left, right = min(x0, x1), max(x0, x1)
        self.fill_rect(left, y, right + 1, y + width, color)

    def text(self, x: int, y: int, text: str, color: Color, scale: int = 1) -> tuple[int, int, int, int]:
        """Write one line of text with its top left corner at ``(x, y)``.

        Parameters
        ----------
        x, y : int
            Top left corner of the first character.
        text : str
            The text; characters outside printable ASCII are drawn as hollow boxes.
        color : Color
            Ink colour (the background is left as it is).
        scale : int
            Size of a font pixel in image pixels (2 doubles the text).

        Returns
        -------
        tuple of int
            The box the text may paint: ``(x0, y0, x1, y1)``, ``x1`` and ``y1`` excluded.
        """
        if scale < 1:
            raise ValueError(f"scale must be at least 1, got {scale}")
        block = np.ones((scale, scale), dtype=bool)
        for i, char in enumerate(text):
            mask = np.kron(glyph(char), block).astype(bool)
            self._paint(mask, x + i * ADVANCE * scale, y, color)
        width, height = text_size(text, scale)
        return x, y, x + width, y + height

    def text_right(
        self, right: int, y: int, text: str, color: Color, scale: int = 1
    ) -> tuple[int, int, int, int]:
        """Write text that ends at column ``right`` (excluded); see :meth:`text`.

        Parameters
        ----------
        right : int
            Column just after the last pixel of the text.
        y : int
            Top of the text.
        text : str
            The text.
        color : Color
            Ink colour.
        scale : int
            Size of a font pixel in image pixels.

        Returns
        -------
        tuple of int
            The box of the text, as :meth:`text` returns it.
        """
        return self.text(right - text_size(text, scale)[0], y, text, color, scale)

    def text_center(
        self, center: int, y: int, text: str, color: Color, scale: int = 1
    ) -> tuple[int, int, int, int]:
        """Write text centred on column ``center``; see :meth:`text`.

        Parameters
        ----------
        center : int
            Column of the middle of the text.
        y : int
            Top of the text.
        text : str
            The text.
        color : Color
            Ink colour.
        scale : int
            Size of a font pixel in image pixels.

        Returns
        -------
        tuple of int
            The box of the text, as :meth:`text` returns it.
        """
        return self.text(center - text_size(text, scale)[0] // 2, y, text, color, scale)

    def _paint(self, mask: NDArray[np.bool_], x: int, y: int, color: Color) -> None:
        """Paint ``color`` where ``mask`` (placed with its top left at ``(x, y)``) is true."""
        height, width = mask.shape
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, self.width), min(y + height, self.height)
        if x0 >= x1 or y0 >= y1:
            return
        window = self.pixels[y0:y1, x0:x1]
        window[mask[y0 - y : y1 - y, x0 - x : x1 - x]] = color

    def to_png(self) -> bytes:
        """The image as the bytes of a PNG file (see :func:`encode_png`).

        Returns
        -------
        bytes
            The PNG file.
        """
        return encode_png(self.pixels)

    def save(self, path: Path) -> Path:
        """Write the image to ``path`` as a PNG file.

        Parameters
        ----------
        path : pathlib.Path
            Where to write.

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        path.write_bytes(self.to_png())
        return path
