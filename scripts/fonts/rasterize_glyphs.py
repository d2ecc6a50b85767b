"""Rasterises the glyphs `vdit compare` draws the Pareto plot's text with.

Writes crates/cli/src/commands/compare/glyphs.bin: for each character of CHARS, in order, a
12x24 cell of 8-bit coverage (0 = background, 255 = ink), row by row, rendered from DejaVu Sans
Mono at 20 px (ascent 19, descent 5). The plot must draw text on a machine without any font
installed, and plotters' own text rendering needs a font rasteriser crate this workspace does not
have, so the bitmaps are made once here and compiled into the binary.

DejaVu fonts are under the Bitstream Vera licence with public-domain DejaVu changes; its notice is
in crates/cli/src/commands/compare/GLYPHS-LICENSE.txt.

Run from the repository root (needs Pillow and fonts-dejavu-core):

    python3 scripts/fonts/rasterize_glyphs.py
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
SIZE = 20
CELL_W, CELL_H = 12, 24
# Printable ASCII, then the few other characters the report labels use. Keep in step with
# `GLYPH_CHARS` in crates/cli/src/commands/compare/pareto.rs.
CHARS = "".join(chr(c) for c in range(32, 127)) + "×—∞"
OUT = Path("crates/cli/src/commands/compare/glyphs.bin")


def main():
    font = ImageFont.truetype(FONT, SIZE)
    out = bytearray()
    for ch in CHARS:
        cell = Image.new("L", (CELL_W, CELL_H), 0)
        ImageDraw.Draw(cell).text((0, 0), ch, font=font, fill=255)
        out += cell.tobytes()
    OUT.write_bytes(bytes(out))
    print(f"{len(CHARS)} glyphs, {len(out)} bytes -> {OUT}")


if __name__ == "__main__":
    main()
