"""Reading a LoRA file's safetensors header on the Hub with HTTP Range requests (no download).

The first request asks for ``bytes=0-99999`` (like ``HfApi.parse_safetensors_file_metadata``: almost every
header fits), a second one for the rest of the header when it is longer. The bytes go through the same checks
as a local file (:mod:`studio.loras.safetensors_io`): the 8-byte length ``N`` is at most 100 MB and
``8 + N`` fits in the file (its size as the Hub lists it), pickle files renamed to ``.safetensors`` are
refused, and the JSON header is validated entry by entry by the very function that validates local headers.
A header longer than :data:`REMOTE_HEADER_LIMIT` is not fetched (the file can still be downloaded and
inspected locally).

Bodies are streamed and read only as far as needed, so a server that ignores ``Range`` (answering 200 with
the whole file) costs no more than the bytes asked for. The ``alpha`` scalars of the LoRA are read from the
first response when they happen to lie inside it (small files); otherwise the inspection goes without them,
as the file's ``ss_network_alpha`` metadata (when present) still gives the alpha.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import torch

from studio.errors import LoraFileError
from studio.loras.inspect import LoraInfo, alpha_keys, summarise
from studio.loras.safetensors_io import (
    DTYPES,
    SafetensorsHeader,
    _broken,
    _parse_header,
    check_suffix,
    header_size_from_prefix,
)

FIRST_BYTES = 100_000
REMOTE_HEADER_LIMIT = 16 * 1024 * 1024


class RemoteName(PurePosixPath):
    """A file name in a Hub repo, standing in for a local path in :func:`studio.loras.inspect.summarise`.

    ``summarise`` looks for high/low sibling files on disk; a remote file has none there (the pairing of
    remote files is done afterwards from the repo's file list, with the library's rules).
    """

    def is_file(self) -> bool:
        return False


def _range_get(url: str, headers: Mapping[str, str], start: int, end: int, timeout: float | None):
    """Bytes ``[start, end]`` (inclusive) of ``url`` and the file's total size when the server says it."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    want = end - start + 1
    request_headers = {**headers, "Range": f"bytes={start}-{end}"}
    with get_session().stream("GET", url, headers=request_headers, timeout=timeout) as response:
        if response.status_code >= 400:
            response.read()
            hf_raise_for_status(response)
        total = None
        skip = 0
        if response.status_code == 206:
            content_range = response.headers.get("Content-Range", "")
            try:
                span, _, size = content_range.removeprefix("bytes ").partition("/")
                first = int(span.split("-")[0])
                total = int(size) if size.strip().isdigit() else None
            except ValueError:
                first = start
            skip = start - first
        else:  # 200: the server ignored the Range header and sends the whole file
            skip = start
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        chunks: list[bytes] = []
        got = 0
        for chunk in response.iter_bytes():
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            if not chunk:
                continue
            chunks.append(chunk[: want - got])
            got += len(chunks[-1])
            if got >= want:
                break
    return b"".join(chunks), total


def read_remote_header(
    url: str,
    headers: Mapping[str, str],
    *,
    file_name: str,
    file_size: int | None,
    timeout: float | None,
) -> tuple[SafetensorsHeader, bytes]:
    """The validated header of the file at ``url`` and the bytes of the first response.

    Raises :class:`~studio.errors.LoraFileError` (a sentence) for a file that is not a valid safetensors
    file; HTTP and connection errors of ``huggingface_hub`` pass through.
    """
    name = PurePosixPath(file_name).name
    path = Path(name)
    check_suffix(path)
    end = FIRST_BYTES - 1 if file_size is None else min(file_size, FIRST_BYTES) - 1
    if end < 0:
        raise _broken(path, "it is empty")
    first, total = _range_get(url, headers, 0, end, timeout)
    size = file_size if file_size is not None else total
    if size is None:
        size = len(first)
    header_size = header_size_from_prefix(path, first[:9], size)
    if header_size > REMOTE_HEADER_LIMIT:
        raise LoraFileError(
            f"{name} has a {header_size / 1e6:.0f} MB header, too large to read over the network; "
            "download it to inspect it."
        )
    raw = first[8 : 8 + header_size]
    if len(raw) < header_size:
        rest, _ = _range_get(url, headers, len(first), 8 + header_size - 1, timeout)
        raw += rest
    if len(raw) < header_size:
        raise _broken(path, "the file ended inside its header")
    return _parse_header(path, raw, header_size, size), first


def alpha_scalars(header: SafetensorsHeader, data: bytes) -> dict[str, torch.Tensor]:
    """The small ``alpha`` tensors whose bytes are inside ``data`` (the file's first bytes); finite ones only."""
    out: dict[str, torch.Tensor] = {}
    for key in alpha_keys(header):
        info = header.tensors[key]
        start, end = header.data_start + info.start, header.data_start + info.end
        if end > len(data) or info.numel == 0:
            continue
        dtype, _ = DTYPES[info.dtype]
        tensor = torch.frombuffer(bytearray(data[start:end]), dtype=dtype, count=info.numel).reshape(
            info.shape
        )
        value = float(tensor.reshape(-1)[0].float())
        if math.isfinite(value):
            out[key] = tensor
    return out


def inspect_remote(
    url: str,
    headers: Mapping[str, str],
    *,
    file: str,
    file_size: int | None,
    sha256: str | None,
    shown_path: str,
    timeout: float | None,
) -> LoraInfo:
    """A :class:`LoraInfo` for a file on the Hub, from its header (and the alphas in the first bytes)."""
    header, first = read_remote_header(url, headers, file_name=file, file_size=file_size, timeout=timeout)
    info = summarise(RemoteName(file), header, alpha_scalars(header, first), sha256=sha256)
    return info.model_copy(update={"path": shown_path})
