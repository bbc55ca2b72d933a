"""Reading LoRA files safely.

Only ``.safetensors`` files are read and nothing here can unpickle: pickle files
(``.pt``, ``.pth``, ``.ckpt``, ``.bin`` …) are refused with a sentence that says how
to convert them. The state dict is handed to diffusers as tensors we read
ourselves, never as a path (diffusers would fall back to pickle for other file
types).

The header is parsed by our own reader before a single tensor byte is touched:

* the first 8 bytes are the little-endian header length ``N``; ``N`` is at most
  100 MB and ``8 + N`` fits in the file;
* the header is a UTF-8 JSON object; ``__metadata__`` (optional) maps str → str;
* every other entry has a known ``dtype``, a ``shape`` of non-negative ints and
  ``data_offsets`` ``[start, end)`` inside the data section with
  ``prod(shape) · itemsize == end - start``; spans do not overlap.

So a truncated, corrupt or hostile file ends in :class:`~studio.errors.LoraFileError`
with a sentence, never in a crash, a hang (only regular files are opened) or a huge
allocation (nothing larger than the file itself is ever allocated). Tensors are read
with one sequential pass over the data section (optionally hashing the file on the
way) and rejected when they hold NaN or infinite values.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from studio.errors import LoraFileError

PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}
SAFETENSORS_SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024
METADATA_KEY = "__metadata__"

# safetensors dtype name -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}

_READ_CHUNK = 16 * 1024 * 1024
_FINITE_CHUNK = 1 << 24  # elements per NaN/Inf check step


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a safetensors header; ``start``/``end`` are relative to the data section."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    file_size: int
    header_size: int = 0  # N, the JSON header's length in bytes

    @property
    def data_start(self) -> int:
        """Offset of the data section in the file."""
        return 8 + self.header_size

    @property
    def data_size(self) -> int:
        return self.file_size - self.data_start


@dataclass
class LoadedFile:
    """The tensors of a file, its header and (when asked for) the file's sha256."""

    tensors: dict[str, torch.Tensor]
    header: SafetensorsHeader
    sha256: str | None = None


def check_suffix(path: str | Path) -> Path:
    """Refuse anything that is not a ``.safetensors`` file name (pickles get their own sentence)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise LoraFileError(
            f"{path.name} is a PyTorch pickle file ({suffix}), and loading a pickle can run any code "
            "hidden in it, so the studio only loads .safetensors files. Download the .safetensors "
            "version if the author publishes one, or convert it on a machine you trust with "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), 'lora.safetensors')."
        )
    if suffix != SAFETENSORS_SUFFIX:
        raise LoraFileError(
            f"{path.name} is not a .safetensors file; the studio only loads .safetensors LoRAs."
        )
    return path


def _open_regular(path: Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise LoraFileError(f"The LoRA file {path} does not exist; add it again from the library.") from None
    except OSError as exc:
        raise LoraFileError(
            f"The LoRA file {path} cannot be read ({exc.strerror}); check its permissions."
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise LoraFileError(f"{path.name} is not a regular file; choose a .safetensors LoRA file.")
    try:
        return open(path, "rb")  # the caller closes it
    except OSError as exc:
        raise LoraFileError(
            f"The LoRA file {path} cannot be read ({exc.strerror}); check its permissions."
        ) from None


def _broken(path: Path, why: str) -> LoraFileError:
    return LoraFileError(
        f"{path.name} is not a valid safetensors file: {why}. Download it again or choose another file."
    )


def _parse_header(path: Path, raw: bytes, header_size: int, file_size: int) -> SafetensorsHeader:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _broken(path, "its header is not UTF-8 text") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise _broken(path, "its header is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _broken(path, "its header is not a JSON object")

    metadata: dict[str, str] = {}
    raw_meta = obj.pop(METADATA_KEY, None)
    if raw_meta is not None:
        if not isinstance(raw_meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items()
        ):
            raise _broken(path, "its __metadata__ is not a mapping of text to text")
        metadata = dict(raw_meta)

    data_size = file_size - 8 - header_size
    tensors: dict[str, TensorInfo] = {}
    for name, entry in obj.items():
        shown = name if len(name) <= 80 else name[:77] + "..."
        if not isinstance(entry, dict):
            raise _broken(path, f"the entry for tensor {shown!r} is not an object")
        dtype = entry.get("dtype")
        if dtype not in DTYPES:
            raise _broken(path, f"tensor {shown!r} has an unknown dtype {str(dtype)[:20]!r}")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _broken(path, f"tensor {shown!r} has an invalid shape")
        offsets = entry.get("data_offsets")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise _broken(path, f"tensor {shown!r} has invalid data_offsets")
        start, end = offsets
        if not 0 <= start <= end <= data_size:
            raise _broken(
                path,
                f"tensor {shown!r} lies outside the file (bytes {start}-{end} of a {data_size}-byte data "
                "section; the file may be cut off)",
            )
        if math.prod(shape) * DTYPES[dtype][1] != end - start:
            raise _broken(path, f"tensor {shown!r} has a size that does not match its shape and dtype")
        tensors[name] = TensorInfo(dtype=dtype, shape=tuple(shape), start=start, end=end)

    spans = sorted((t.start, t.end, n) for n, t in tensors.items() if t.end > t.start)
    for (_s0, e0, n0), (s1, _e1, n1) in itertools.pairwise(spans):
        if s1 < e0:
            raise _broken(path, f"tensors {n0[:60]!r} and {n1[:60]!r} overlap")
    return SafetensorsHeader(tensors=tensors, metadata=metadata, file_size=file_size, header_size=header_size)


def header_size_from_prefix(path: Path, head: bytes, file_size: int) -> int:
    """The header length from a file's first bytes (8, or more), after the checks every reader makes.

    Refuses a short file, a pickle renamed to .safetensors, a header over the 100 MB cap and
    a header longer than the file (``file_size`` is the whole file's size, local or remote).
    A pickle starts with ``\\x80`` (or ``PK`` for torch's zip format), but so does a header
    length whose lowest byte is 128: with a 9th byte given, a header that opens with ``{``
    (as every safetensors header must) is not taken for a pickle.
    """
    if len(head) < 8:
        raise _broken(path, f"it is only {len(head)} bytes long (the download was probably cut off)")
    pickle_like = head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"
    if pickle_like and head[8:9] != b"{":
        raise LoraFileError(
            f"{path.name} is a PyTorch pickle file renamed to .safetensors; the studio does not load "
            "pickles because they can run code. Get the real .safetensors version of this LoRA."
        )
    header_size = int.from_bytes(head[:8], "little")
    if header_size > MAX_HEADER_BYTES:
        raise _broken(
            path,
            f"its header claims to be {header_size:,} bytes, more than the 100 MB a LoRA header may have",
        )
    if 8 + header_size > file_size:
        raise _broken(
            path,
            f"its header claims {header_size:,} bytes but the file has only {file_size:,} "
            "(the download was probably cut off)",
        )
    return header_size


def _read_header_from(f, path: Path, hasher=None) -> SafetensorsHeader:
    file_size = os.fstat(f.fileno()).st_size
    first = f.read(9)  # the length and the header's first byte (see header_size_from_prefix)
    head = first[:8]
    header_size = header_size_from_prefix(path, first, file_size)
    raw = (first[8:] + f.read(max(0, header_size - len(first[8:]))))[:header_size]
    if len(raw) < header_size:
        raise _broken(path, "the file ended inside its header (it changed while being read)")
    if hasher is not None:
        hasher.update(head)
        hasher.update(raw)
    return _parse_header(path, raw, header_size, file_size)


def read_header(path: str | Path) -> SafetensorsHeader:
    """Read and validate the header of a ``.safetensors`` file; no tensor data is read."""
    path = check_suffix(path)
    with _open_regular(path) as f:
        return _read_header_from(f, path)


def _tensor_from(buf: bytearray | bytes, info: TensorInfo, base: int = 0) -> torch.Tensor:
    dtype, itemsize = DTYPES[info.dtype]
    if info.numel == 0:
        return torch.empty(info.shape, dtype=dtype)
    offset = base + info.start
    if offset % itemsize:  # keep element access aligned
        data = bytearray(buf[offset : offset + info.nbytes])
        offset = 0
    else:
        data = buf
    return torch.frombuffer(data, dtype=dtype, count=info.numel, offset=offset).reshape(info.shape)


def _check_finite(path: Path, name: str, info: TensorInfo, tensor: torch.Tensor) -> None:
    if info.dtype not in FLOAT_DTYPES or tensor.numel() == 0:
        return
    flat = tensor.reshape(-1)
    upcast = info.dtype in ("F8_E4M3", "F8_E5M2")
    for i in range(0, flat.numel(), _FINITE_CHUNK):
        part = flat[i : i + _FINITE_CHUNK]
        if upcast:
            part = part.to(torch.float16)
        low, high = torch.aminmax(part)  # NaN and ±Inf show up in the extremes; much faster than isfinite
        if not (math.isfinite(float(low)) and math.isfinite(float(high))):
            shown = name if len(name) <= 80 else name[:77] + "..."
            raise LoraFileError(
                f"{path.name} contains NaN or infinite values (in tensor {shown!r}), so it would turn "
                "every video into noise; the training run that made it probably diverged. Use another "
                "epoch of this LoRA or download it again."
            )


def read_file(path: str | Path, *, want_sha256: bool = False, check_finite: bool = True) -> LoadedFile:
    """Validate the header, then read every tensor in one sequential pass.

    With ``want_sha256`` the file's sha256 is computed from the same bytes, so a
    caller that needs both the tensors and the hash reads the file once.
    """
    path = check_suffix(path)
    hasher = hashlib.sha256() if want_sha256 else None
    with _open_regular(path) as f:
        header = _read_header_from(f, path, hasher)
        data_size = header.data_size
        buf = bytearray(data_size)
        view = memoryview(buf)
        pos = 0
        try:
            while pos < data_size:
                n = f.readinto(view[pos : pos + _READ_CHUNK])
                if not n:
                    break
                if hasher is not None:
                    hasher.update(view[pos : pos + n])
                pos += n
        except OSError as exc:
            raise LoraFileError(f"{path.name} could not be read ({exc.strerror}); try again.") from None
        finally:
            view.release()
        if pos < data_size:
            raise _broken(path, "the file ended early (it changed while being read)")
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.tensors.items():
        tensor = _tensor_from(buf, info)
        if check_finite:
            _check_finite(path, name, info, tensor)
        tensors[name] = tensor
    return LoadedFile(tensors=tensors, header=header, sha256=hasher.hexdigest() if hasher else None)


def read_tensors(
    path: str | Path, header: SafetensorsHeader, names: Iterable[str], *, max_bytes: int = 1 << 20
) -> dict[str, torch.Tensor]:
    """Read only the named tensors (each at most ``max_bytes``) by seeking; used for alpha scalars."""
    path = check_suffix(path)
    wanted = sorted(
        (header.tensors[n].start, n)
        for n in names
        if n in header.tensors and header.tensors[n].nbytes <= max_bytes
    )
    out: dict[str, torch.Tensor] = {}
    with _open_regular(path) as f:
        for _start, name in wanted:
            info = header.tensors[name]
            f.seek(header.data_start + info.start)
            raw = f.read(info.nbytes)
            if len(raw) < info.nbytes:
                raise _broken(path, "the file ended early (it changed while being read)")
            tensor = _tensor_from(bytearray(raw), info, base=-info.start)
            _check_finite(path, name, info, tensor)
            out[name] = tensor
    return out


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read all tensors of a LoRA file into CPU memory (header validated first, NaN/Inf refused)."""
    return read_file(path).tensors
