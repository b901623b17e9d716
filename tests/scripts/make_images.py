#!/usr/bin/env python3
"""Writes the test images of tests/test_image_folder.cpp and what PIL decodes from them.

usage: make_images.py OUT_DIR SEED

OUT_DIR/good/<name>.<ext>      one image per colour type, random size and content
OUT_DIR/good/<name>.c3.f32     the expected [3, H, W] float32 pixels in [0, 1] (little-endian)
OUT_DIR/good/<name>.c1.f32     the expected [1, H, W]
OUT_DIR/good.txt               "<file> <width> <height> <tolerance>" per image
OUT_DIR/draft/photo.jpg        a 500x375 RGB JPEG
OUT_DIR/draft/s<N>.f32         PIL's Image.draft() decode at 1/N (N = 2, 4, 8), [3, H, W]
OUT_DIR/draft.txt              "<N> <width> <height>" per reduced decode
OUT_DIR/bad/*                  zero-byte, truncated, corrupt and non-image files

Expected values are what torchvision's loader gives (PIL's Image.open(f).convert("RGB") or
convert("L"), then / 255), except for 16-bit PNGs, which PIL cannot convert without losing bits:
there the expectation is computed from the 16-bit samples written (value / 65535, luma with
PIL's weights 19595, 38470, 7471 / 65536).
"""
import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

JPEG_TOLERANCE = 1.0 / 255 + 1e-6
EXACT = 1e-6


def planar(array):
    """[H, W] or [H, W, C] -> float32 [C, H, W]."""
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(np.transpose(array, (2, 0, 1))).astype(np.float32)


def pil_expected(path):
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255
    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"), dtype=np.float64) / 255
    return planar(rgb), planar(grey)


def png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]  # (x0, y0, dx, dy) of each pass


def write_png(path, samples, color_type, interlaced=False):
    """samples: uint8 or uint16 [H, W, C]; color_type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA.
    Written by hand: PIL writes neither 16-bit colour nor interlaced PNGs."""
    height, width, _ = samples.shape
    depth = 16 if samples.dtype == np.uint16 else 8
    big_endian = samples.astype(">u2") if depth == 16 else samples

    def scanlines(image):
        return b"".join(b"\x00" + image[y].tobytes() for y in range(image.shape[0]))

    if interlaced:
        raw = b"".join(scanlines(big_endian[y0::dy, x0::dx]) for x0, y0, dx, dy in ADAM7
                       if big_endian[y0::dy, x0::dx].size)
    else:
        raw = scanlines(big_endian)
    data = (b"\x89PNG\r\n\x1a\n" +
            png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0,
                                           int(interlaced))) +
            png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))
    Path(path).write_bytes(data)


def ycck_jpeg(cmyk):
    """A YCCK JPEG (Adobe transform 2) of uint8 [H, W, 4] CMYK samples, written by TurboJPEG
    through ctypes (PIL writes CMYK JPEGs only as plain CMYK): tjCompress2 turns TJPF_CMYK into
    YCCK."""
    import ctypes
    tj = ctypes.CDLL("libturbojpeg.so.0")
    tj.tjInitCompress.restype = ctypes.c_void_p
    handle = ctypes.c_void_p(tj.tjInitCompress())
    height, width, _ = cmyk.shape
    source = np.ascontiguousarray(cmyk).tobytes()
    out = ctypes.POINTER(ctypes.c_ubyte)()
    size = ctypes.c_ulong(0)
    tjpf_cmyk, tjsamp_420 = 11, 2
    status = tj.tjCompress2(handle, source, width, 0, height, tjpf_cmyk, ctypes.byref(out),
                            ctypes.byref(size), tjsamp_420, 90, 0)
    assert status == 0, "tjCompress2 failed"
    data = ctypes.string_at(out, size.value)
    tj.tjFree(out)
    tj.tjDestroy(handle)
    return data


def expected16(samples):
    values = samples.astype(np.float64)
    colour = samples.shape[2] >= 3
    if colour:
        rgb = values[:, :, :3] / 65535
        luma = (values[:, :, 0] * 19595 + values[:, :, 1] * 38470 + values[:, :, 2] * 7471) / 65536
        grey = luma / 65535
    else:
        rgb = np.repeat(values[:, :, :1], 3, axis=2) / 65535
        grey = values[:, :, 0] / 65535
    return planar(rgb), planar(grey)


def strip_adobe(data):
    """The JPEG without its APP14 "Adobe" segment."""
    out = bytearray(data[:2])
    i = 2
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out += data[i:]
            break
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        segment = data[i:i + 2 + length]
        if not (marker == 0xEE and segment[4:9] == b"Adobe"):
            out += segment
        i += 2 + length
    return bytes(out)


def main():
    out = Path(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    good = out / "good"
    good.mkdir(parents=True)
    manifest = []

    def size():
        return int(rng.integers(9, 40)), int(rng.integers(9, 40))

    def smooth(height, width, channels):
        # A gradient plus noise: JPEG-friendly yet never constant.
        y, x = np.mgrid[0:height, 0:width]
        base = (x * 255 / width + y * 128 / height)[:, :, None]
        noise = rng.integers(0, 80, (height, width, channels))
        return np.clip(base + noise + rng.integers(0, 60, channels), 0, 255).astype(np.uint8)

    def add(name, expected, tolerance):
        rgb, grey = expected
        rgb.tofile(good / (name + ".c3.f32"))
        grey.tofile(good / (name + ".c1.f32"))
        manifest.append(f"{name} {rgb.shape[2]} {rgb.shape[1]} {tolerance}")

    def pil_image(mode, name, **save):
        width, height = size()
        channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
        pixels = smooth(height, width, channels)
        im = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode)
        path = good / name
        im.save(path, **save)
        return path

    # JPEG: RGB (4:2:0 and 4:4:4 progressive), grey, CMYK (Adobe, as PIL writes it), CMYK
    # without the Adobe segment (PIL still assumes the inverted polarity) and YCCK.
    for name, mode, save in [("rgb420.jpg", "RGB", {"quality": 90}),
                             ("rgb444p.jpeg", "RGB", {"quality": 95, "subsampling": 0,
                                                      "progressive": True}),
                             ("grey.jpg", "L", {"quality": 90}),
                             ("cmyk.jpg", "CMYK", {"quality": 90})]:
        path = pil_image(mode, name, **save)
        add(name, pil_expected(path), JPEG_TOLERANCE)
    plain = good / "cmyk_plain.jpg"
    plain.write_bytes(strip_adobe((good / "cmyk.jpg").read_bytes()))
    assert b"Adobe" not in plain.read_bytes()
    add(plain.name, pil_expected(plain), JPEG_TOLERANCE)

    ycck = good / "ycck.jpg"
    ycck.write_bytes(ycck_jpeg(smooth(*size()[::-1], 4)))
    adobe = ycck.read_bytes().find(b"Adobe")
    assert adobe > 0 and ycck.read_bytes()[adobe + 11] == 2, "not a YCCK JPEG"
    add(ycck.name, pil_expected(ycck), JPEG_TOLERANCE)

    # PNG, 8-bit and below: exact.
    for name, mode in [("grey.png", "L"), ("grey_alpha.png", "LA"), ("rgb.png", "RGB"),
                       ("rgba.PNG", "RGBA")]:
        path = pil_image(mode, name)
        add(name, pil_expected(path), EXACT)
    width, height = size()
    bits = Image.fromarray(rng.integers(0, 2, (height, width)).astype(bool))
    bits.save(good / "bilevel.png")  # 1-bit greyscale
    add("bilevel.png", pil_expected(good / "bilevel.png"), EXACT)
    rgb = Image.fromarray(smooth(*size()[::-1], 3), "RGB")
    palette = rgb.quantize(colors=37)
    palette.info["transparency"] = 3
    palette.save(good / "palette.png", transparency=3)
    with Image.open(good / "palette.png") as check:
        assert check.mode == "P"
    add("palette.png", pil_expected(good / "palette.png"), EXACT)
    # Interlaced (Adam7) RGB.
    samples = smooth(*size()[::-1], 3)
    write_png(good / "interlaced.png", samples, 2, interlaced=True)
    add("interlaced.png", pil_expected(good / "interlaced.png"), EXACT)
    assert np.array_equal(np.asarray(Image.open(good / "interlaced.png")), samples)
    # A PNG whose name says JPEG: found by its content.
    (good / "png_named.jpg").write_bytes((good / "rgb.png").read_bytes())
    add("png_named.jpg", pil_expected(good / "png_named.jpg"), EXACT)

    # PNG, 16-bit: expectations from the samples.
    for name, channels, color_type in [("grey16.png", 1, 0), ("grey_alpha16.png", 2, 4),
                                       ("rgb16.png", 3, 2), ("rgba16.png", 4, 6)]:
        width, height = size()
        samples = rng.integers(0, 65536, (height, width, channels)).astype(np.uint16)
        write_png(good / name, samples, color_type)
        add(name, expected16(samples), EXACT)
    (out / "good.txt").write_text("\n".join(manifest) + "\n")

    # A 500x375 photo-like JPEG, and PIL's reduced DCT decodes of it (Image.draft).
    draft = out / "draft"
    draft.mkdir()
    photo = Image.fromarray(smooth(375, 500, 3), "RGB")
    photo.save(draft / "photo.jpg", quality=90)
    lines = []
    for scale in (2, 4, 8):
        with Image.open(draft / "photo.jpg") as im:
            im.draft("RGB", (500 // scale, 375 // scale))
            pixels = np.asarray(im.convert("RGB"), dtype=np.float64) / 255
        planar(pixels).tofile(draft / f"s{scale}.f32")
        lines.append(f"{scale} {pixels.shape[1]} {pixels.shape[0]}")
    (out / "draft.txt").write_text("\n".join(lines) + "\n")

    # Bad files.
    bad = out / "bad"
    bad.mkdir()
    jpeg = (good / "rgb420.jpg").read_bytes()
    png = (good / "rgb.png").read_bytes()
    (bad / "zero.jpg").write_bytes(b"")
    # Cut inside the entropy-coded data: libjpeg-turbo would "decode" it with a warning and grey.
    photo_bytes = (draft / "photo.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(photo_bytes[:len(photo_bytes) * 6 // 10])
    (bad / "truncated_header.jpg").write_bytes(jpeg[:100])
    (bad / "truncated.png").write_bytes(png[:len(png) * 6 // 10])
    corrupt = bytearray(png)
    corrupt[len(png) // 2] ^= 0xFF  # inside IDAT: a CRC error
    (bad / "corrupt.png").write_bytes(bytes(corrupt))
    corrupt = bytearray(jpeg)
    corrupt[2:40] = bytes(rng.integers(0, 256, 38, dtype=np.uint8))  # the headers destroyed
    corrupt[2] = 0xFF
    (bad / "corrupt.jpg").write_bytes(bytes(corrupt))
    (bad / "text.jpg").write_bytes(b"GIF89a is not what this is; just text\n")


if __name__ == "__main__":
    main()
