"""The ``.fsv`` file: a video field's sessions as quantised, entropy-coded weights and bit-packed masks.

Layout (integers little-endian)::

    b"FSV\\0" | format version u16 | header length u32 | header | chunk 1 | ... | chunk S | SHA-256 of all before

The header is compact JSON (LZMA2-compressed): the VideoField config, the bit depth and one
entry per video (name, frames, size, fps, chunk length, metrics measured when it was encoded).
Chunk s holds session s alone:

* the session's mask of every shared tensor, bit-packed (``numpy.packbits``),
* the values of the weights that session s used *for the first time* (in its mask and in no
  earlier one), quantised per channel to ``bits`` with a float32 (min, step) per channel (output channels,
  or input channels where output channels are short, or one range for small tensors),
* its own output head, quantised the same way,

each part LZMA2-coded (Python's ``lzma``, raw stream: no container overhead). Weights used by an
earlier session are never stored again and never change, so video j decodes from chunks 1..j and
its own mask exactly as it did when it was encoded, whatever sessions follow.

The encoder writes the dequantised values back into the network it trained, so the network in
memory and the one rebuilt from the file compute the same frames, bit for bit (same machine and
PyTorch build: float results of convolutions may differ across CPUs and libraries).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fieldstudio.errors import InputError
from fieldstudio.fields.subnet import masked_tensors, set_mode
from fieldstudio.fields.video import VideoField

MAGIC = b"FSV\0"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHI")
_DIGEST = 32
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def _pack(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_FILTERS)


def _unpack(data: bytes) -> bytes:
    return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_FILTERS)


_MIN_PER_CHANNEL = 256  # a channel's (min, step) costs 8 bytes: worth it only for enough weights


def _channel_axis(shape: tuple[int, ...]) -> int | None:
    """Output channels (axis 0) when each holds enough weights; else input channels (axis 1); else one range.

    The stem's last linear layer has thousands of short output rows (one per feature-map cell):
    there the input axis keeps the per-channel ranges at a few dozen.
    """
    if len(shape) < 2:
        return None
    n = int(np.prod(shape))
    for axis in (0, 1):
        if n // shape[axis] >= _MIN_PER_CHANNEL:
            return axis
    return None


def quantize(values: torch.Tensor, select: torch.Tensor, bits: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Quantise ``values[select]`` per channel. Returns (codes, float32 stats [C, 2], dequantised tensor).

    Dequantisation (``min + code * step`` in float32) is the one the decoder runs, so the
    returned tensor is exactly what the file reproduces.
    """
    v = values.detach().to("cpu", torch.float32)
    axis = _channel_axis(tuple(v.shape))
    chans = v.shape[axis] if axis is not None else 1
    vm = v.movedim(axis, 0).reshape(chans, -1) if axis is not None else v.reshape(1, -1)
    sm = select.to("cpu").movedim(axis, 0).reshape(chans, -1) if axis is not None else select.to("cpu").reshape(1, -1)
    big = torch.finfo(torch.float32).max
    lo = torch.where(sm, vm, torch.full_like(vm, big)).amin(dim=1)
    hi = torch.where(sm, vm, torch.full_like(vm, -big)).amax(dim=1)
    empty = ~sm.any(dim=1)
    lo = torch.where(empty, torch.zeros_like(lo), lo)
    step = torch.where(empty | (hi <= lo), torch.ones_like(lo), (hi - lo) / (2 ** bits - 1))
    stats = torch.stack([lo, step], dim=1).numpy().astype(np.float32)
    lo_t, step_t = torch.from_numpy(stats[:, 0:1]), torch.from_numpy(stats[:, 1:2])
    codes = torch.clamp(torch.round((vm - lo_t) / step_t), 0, 2 ** bits - 1)
    deq = lo_t + codes * step_t
    out = torch.where(sm, deq, vm)
    out = out.reshape(v.movedim(axis, 0).shape).movedim(0, axis) if axis is not None else out.reshape(v.shape)
    dtype = np.uint8 if bits <= 8 else np.uint16
    return codes[sm].numpy().astype(dtype), stats, out


def dequantize(codes: np.ndarray, stats: np.ndarray, select: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `quantize` for the selected positions; zeros elsewhere."""
    axis = _channel_axis(shape)
    chans = shape[axis] if axis is not None else 1
    sel = select.movedim(axis, 0).reshape(chans, -1) if axis is not None else select.reshape(1, -1)
    lo_t, step_t = torch.from_numpy(stats[:, 0:1].copy()), torch.from_numpy(stats[:, 1:2].copy())
    full = torch.zeros(sel.shape, dtype=torch.float32)
    codes_t = torch.zeros(sel.shape, dtype=torch.float32)
    codes_t[sel] = torch.from_numpy(codes.astype(np.float32))
    full = torch.where(sel, lo_t + codes_t * step_t, full)
    moved = [shape[axis]] + [s for i, s in enumerate(shape) if i != axis] if axis is not None else list(shape)
    return full.reshape(moved).movedim(0, axis) if axis is not None else full.reshape(shape)


class VideoLibrary:
    """A video field and its sessions: one per video, each with a stored mask and its own head."""

    def __init__(self, field: VideoField, bits: int = 8):
        if not 2 <= bits <= 16:
            raise InputError(f"bit depth {bits} is not supported", "use --bits between 2 and 16")
        self.field = field
        self.bits = bits
        self.masks: list[dict[str, torch.Tensor]] = []
        self.chunks: list[bytes] = []
        self.videos: list[dict[str, Any]] = []

    # --- sessions ------------------------------------------------------------------------------
    def used(self) -> dict[str, torch.Tensor]:
        """Union of all stored masks: the frozen weights."""
        out = {}
        for name, layer, attr in masked_tensors(self.field):
            u = torch.zeros_like(getattr(layer, attr), dtype=torch.bool, device="cpu")
            for m in self.masks:
                u |= m[name]
            out[name] = u
        return out

    def add_session(self, masks: dict[str, torch.Tensor], video: dict[str, Any]) -> bytes:
        """Quantise the new weights of this session in the field (in place) and encode its chunk."""
        s = len(self.masks)
        used = self.used()
        mask_bits, codes, stats = [], [], []
        with torch.no_grad():
            for name, layer, attr in masked_tensors(self.field):
                m = masks[name].to("cpu", torch.bool)
                mask_bits.append(np.packbits(m.numpy().reshape(-1)))
                new = m & ~used[name]
                p = getattr(layer, attr)
                c, st, deq = quantize(p, new, self.bits)
                p.copy_(deq.to(p.device))
                codes.append(c)
                stats.append(st)
            for p in self.field.session_parameters(s):
                c, st, deq = quantize(p, torch.ones_like(p, dtype=torch.bool, device="cpu"), self.bits)
                p.copy_(deq.to(p.device))
                codes.append(c)
                stats.append(st)
        chunk = b"".join(_framed(_pack(b)) for b in (
            np.concatenate(mask_bits).tobytes(), np.concatenate(stats).astype("<f4").tobytes(),
            np.concatenate(codes).astype(np.uint8 if self.bits <= 8 else "<u2").tobytes()))
        self.masks.append({k: v.to("cpu", torch.bool).clone() for k, v in masks.items()})
        self.chunks.append(chunk)
        self.videos.append(dict(video, bytes=len(chunk)))
        return chunk

    def use_video(self, j: int) -> None:
        """Set the field's fixed masks to video j's."""
        set_mode(self.field, "fixed")
        for name, layer, attr in masked_tensors(self.field):
            getattr(layer, f"mask_{attr}").copy_(self.masks[j][name].to(getattr(layer, attr).device))

    @torch.no_grad()
    def decode(self, j: int, batch: int = 8) -> torch.Tensor:
        """Frames [T, 3, H, W] of video j (0-based)."""
        if not 0 <= j < len(self.videos):
            raise InputError(f"there is no video {j + 1} in this file ({len(self.videos)} videos)",
                             f"choose 1..{len(self.videos)}")
        self.use_video(j)
        self.field.eval()
        n = self.videos[j]["frames"]
        device = next(self.field.parameters()).device
        t = torch.arange(n, dtype=torch.float32, device=device) / n
        return torch.cat([self.field(t[i:i + batch], j) for i in range(0, n, batch)]).cpu()

    # --- bytes ------------------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        return {"field": {**self.field.config, "heads": len(self.videos)}, "bits": self.bits, "videos": self.videos}

    def to_bytes(self) -> bytes:
        head = _pack(json.dumps(self.header(), separators=(",", ":")).encode())
        body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head + b"".join(self.chunks)
        return body + hashlib.sha256(body).digest()

    def save(self, path: str | Path) -> int:
        """Write atomically (temporary file + rename): a failure leaves any old file untouched."""
        data = self.to_bytes()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return len(data)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "file", device: str | torch.device = "cpu") -> "VideoLibrary":
        header, chunks = read_header(data, name)
        field = VideoField(header["field"]).to(device)
        with torch.no_grad():
            for _, p in field.shared_parameters():
                p.zero_()
        lib = cls(field, int(header["bits"]))
        try:
            for s, (video, chunk) in enumerate(zip(header["videos"], chunks)):
                lib._load_chunk(s, chunk)
                lib.videos.append(dict(video))
        except (lzma.LZMAError, ValueError, IndexError, RuntimeError) as exc:
            raise InputError(f"{name}: session data cannot be decoded ({exc})", "the file is damaged; re-encode it") from None
        return lib

    def _load_chunk(self, s: int, chunk: bytes) -> None:
        parts = _unframe(chunk, 3)
        bits_raw, stats_raw, codes_raw = (_unpack(p) for p in parts)
        mask_bits = np.frombuffer(bits_raw, dtype=np.uint8)
        stats_all = np.frombuffer(stats_raw, dtype="<f4").reshape(-1, 2)
        codes_all = np.frombuffer(codes_raw, dtype=np.uint8 if self.bits <= 8 else "<u2")
        used = self.used()
        masks, bo, so, co = {}, 0, 0, 0
        with torch.no_grad():
            for name, layer, attr in masked_tensors(self.field):
                p = getattr(layer, attr)
                n = p.numel()
                nbytes = (n + 7) // 8
                m = torch.from_numpy(np.unpackbits(mask_bits[bo:bo + nbytes])[:n].astype(bool)).reshape(p.shape)
                bo += nbytes
                masks[name] = m
                new = m & ~used[name]
                so, co = self._fill(p, new, stats_all, codes_all, so, co)
            for p in self.field.session_parameters(s):
                so, co = self._fill(p, torch.ones(p.shape, dtype=torch.bool), stats_all, codes_all, so, co)
        if bo != len(mask_bits) or so != len(stats_all) or co != len(codes_all):
            raise ValueError("chunk sizes do not match the network")
        self.masks.append(masks)
        self.chunks.append(chunk)

    def _fill(self, p, select, stats_all, codes_all, so, co):
        axis = _channel_axis(tuple(p.shape))
        chans = p.shape[axis] if axis is not None else 1
        k = int(select.sum())
        if co + k > len(codes_all) or so + chans > len(stats_all):
            raise ValueError("chunk is shorter than the network needs")
        vals = dequantize(codes_all[co:co + k], stats_all[so:so + chans], select, tuple(p.shape))
        p.copy_(torch.where(select.to(p.device), vals.to(p.device), p))
        return so + chans, co + k


def _framed(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b


def _unframe(chunk: bytes, n: int) -> list[bytes]:
    out, o = [], 0
    for _ in range(n):
        if o + 4 > len(chunk):
            raise ValueError("chunk truncated")
        (k,) = struct.unpack_from("<I", chunk, o)
        out.append(chunk[o + 4:o + 4 + k])
        o += 4 + k
    if o != len(chunk):
        raise ValueError("chunk has trailing bytes")
    return out


def file_version(data: bytes) -> int:
    return _PREFIX.unpack_from(data)[1]


def read_header(data: bytes, name: str = "file") -> tuple[dict[str, Any], list[bytes]]:
    """Check magic, version and checksum; return the header and the session chunks."""
    fix = "the file is truncated or corrupted; encode the video again (or use an intact copy)"
    if len(data) < _PREFIX.size + _DIGEST or data[:4] != MAGIC:
        raise InputError(f"{name} is not a fieldstudio video file (.fsv)", "give a file written by `fieldstudio video compress`")
    _, version, head_len = _PREFIX.unpack_from(data)
    if version > FORMAT_VERSION:
        raise InputError(f"{name} uses .fsv format version {version}; this fieldstudio reads up to {FORMAT_VERSION}",
                         "upgrade fieldstudio to read it")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise InputError(f"{name}: checksum mismatch", fix)
    try:
        header = json.loads(_unpack(body[_PREFIX.size:_PREFIX.size + head_len]))
        sizes = [int(v["bytes"]) for v in header["videos"]]
    except (lzma.LZMAError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{name}: header cannot be read ({exc})", fix) from None
    o = _PREFIX.size + head_len
    if o + sum(sizes) != len(body):
        raise InputError(f"{name}: sessions take {sum(sizes)} bytes but the file holds {len(body) - o}", fix)
    chunks = []
    for k in sizes:
        chunks.append(body[o:o + k])
        o += k
    return header, chunks


def load(path: str | Path, device: str | torch.device = "cpu") -> VideoLibrary:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}", "give a .fsv file written by `fieldstudio video compress`")
    return VideoLibrary.from_bytes(path.read_bytes(), path.name, device)
