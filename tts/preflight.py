"""Cheap checks of a checkpoint set before anything is loaded (`tts check`, ``Engine.open``).

Nothing here unpickles a file or reads tensor data. Containers are recognised by their first
bytes, zip archives by their central directory, safetensors files by their JSON header, and a
torch zip's pickle is only walked opcode by opcode (:mod:`pickletools`) for the strings it holds
(tensor names) and the globals it would import. So the commonest broken files (a failed
download saved as HTML, a Git LFS pointer, an interrupted download, an empty file, a directory, a
zip that is not a torch checkpoint, a pickle that would run code, an IndexTTS 1.x set) are named
in one line each, quickly, even for multi-GB files. Tensor-level problems (names, shapes, dtypes,
NaN) are for `tts validate` and the strict loader.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tts.checkpoints import (
    FILES,
    CheckpointError,
    CheckpointSet,
    config_problems,
    indextts1_evidence,
    indextts1_message,
    missing_files,
)

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Globals a plain state-dict pickle imports besides torch's own (torch.*); see
# torch._weights_only_unpickler. A cheap look-ahead only: the weights_only unpickler used for
# loading is the actual guard.
_PLAIN_GLOBALS = {
    "collections.OrderedDict",
    "collections.Counter",
    "_codecs.encode",
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "builtins.complex",
    "builtins.slice",
}


def _describe_text(head: bytes) -> str:
    text = head.decode("utf-8", "replace").strip().splitlines()
    first = text[0][:40] if text else ""
    return repr(first)


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head[:-3].decode("utf-8", "replace")  # a multi-byte character may be cut at the end
    printable = sum(c.isprintable() or c in "\r\n\t" for c in text)
    return printable >= 0.95 * max(1, len(text))


def _safetensors_header_len(head: bytes) -> int | None:
    """The header length if ``head`` starts like a safetensors file, else None."""
    if len(head) < 9 or head[8:9] != b"{":
        return None
    n = int.from_bytes(head[:8], "little")
    return n if 2 <= n <= 100_000_000 else None


def sniff(path: str | Path) -> str:
    """Recognise one checkpoint file's container, or raise a one-line :class:`CheckpointError`.

    The expected container follows the suffix: ``.safetensors`` must be safetensors with all the
    tensor data its header promises; ``.pth``/``.pt``/``.bin`` a torch checkpoint (a zip archive
    holding ``data.pkl``, or a legacy pickle); ``.json`` must parse; anything else (e.g.
    ``bpe.model``) must at least not be text. Returns ``"safetensors"``, ``"torch zip"``,
    ``"torch pickle"``, ``"json"`` or ``"binary"``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(256)
    except PermissionError:
        raise CheckpointError(
            f"{path}: cannot be read (permission denied); make it readable, e.g. chmod a+r"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes); download it again")
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(
            f"{path}: is a Git LFS pointer ({size} bytes), not the file itself; run "
            "`git lfs pull` in the clone or download the file directly"
        )
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            hint = f"; it starts with {_describe_text(head)}" if _looks_like_text(head) else ""
            raise CheckpointError(f"{path}: not valid JSON ({_first_line(exc)}{hint})") from None
        return "json"
    st_len = _safetensors_header_len(head)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        kind = "zip"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        kind = "pickle"
    elif st_len is not None:
        kind = "safetensors"
    elif _looks_like_text(head):
        raise CheckpointError(
            f"{path}: is a text file, not a checkpoint (it starts with {_describe_text(head)}); "
            "a failed download or an error page? Download it again"
        )
    else:
        kind = "binary"
    if suffix == ".safetensors":
        if kind != "safetensors":
            what = {"zip": "a zip archive (torch checkpoint?)", "pickle": "a pickle"}.get(
                kind, "not a safetensors file"
            )
            raise CheckpointError(f"{path}: {what}, but a .safetensors file is expected")
        _check_safetensors(path, size, st_len)
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        if kind == "zip":
            _torch_zip_pickle(path)
            return "torch zip"
        if kind == "pickle":
            return "torch pickle"
        if kind == "safetensors":
            raise CheckpointError(
                f"{path}: is a safetensors file, but {suffix} must be a torch checkpoint"
            )
        raise CheckpointError(
            f"{path}: not a torch checkpoint (neither a zip archive nor a pickle; "
            f"first bytes {head[:8].hex()})"
        )
    return "binary"


def _check_safetensors(path: Path, size: int, header_len: int | None) -> None:
    assert header_len is not None
    if 8 + header_len > size:
        raise CheckpointError(
            f"{path}: not a readable safetensors file: truncated ({size:,} bytes; its header "
            f"alone needs {8 + header_len:,}); download it again"
        )
    with open(path, "rb") as fh:
        fh.seek(8)
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError):
        raise CheckpointError(f"{path}: not a readable safetensors file (corrupt header)") from None
    need = 8 + header_len + max(ends, default=0)
    if need > size:
        raise CheckpointError(
            f"{path}: not a readable safetensors file: truncated ({size:,} of {need:,} bytes); "
            "download it again"
        )


def _torch_zip_pickle(path: Path) -> bytes:
    """The ``data.pkl`` bytes of a torch zip checkpoint, or a one-line error."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
            if not pkl:
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                raise CheckpointError(
                    f"{path}: a zip archive, but not a torch checkpoint (no data.pkl; it holds "
                    f"{shown or 'nothing'})"
                )
            return zf.read(pkl[0])
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CheckpointError(
            f"{path}: truncated or corrupt zip archive ({exc}); an interrupted download? "
            "Download it again"
        ) from None


@dataclass
class PickleScan:
    """What a pickle would do, found without running it."""

    strings: set[str]
    globals: list[str]

    @property
    def unsafe_globals(self) -> list[str]:
        return [g for g in self.globals if not g.startswith("torch.") and g not in _PLAIN_GLOBALS]


def scan_torch_file(path: str | Path) -> PickleScan:
    """Strings and globals of a torch checkpoint's pickle(s), walked opcode by opcode.

    Nothing is executed. A zip checkpoint has one ``data.pkl``; the legacy format is several
    pickles in a row (magic number, protocol, system info, the object, storage keys) followed by
    raw data, so up to five pickles are walked from the start of the file.
    """
    path = Path(path)
    if sniff(path) == "torch zip":
        streams = [io.BytesIO(_torch_zip_pickle(path))]
        limit = 1
    else:
        streams = [open(path, "rb")]  # noqa: SIM115 - closed below
        limit = 5
    strings: set[str] = set()
    found: list[str] = []
    try:
        for _ in range(limit):
            recent: list[str] = []
            for op, arg, _pos in pickletools.genops(streams[0]):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                    strings.add(arg)
                    recent = [*recent[-1:], arg]
                elif op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(recent) == 2:
                    found.append(".".join(recent))
    except (ValueError, EOFError) as exc:
        if not strings and not found:
            raise CheckpointError(f"{path}: corrupt pickle ({_first_line(exc)})") from None
        # past the last pickle of a legacy file (its raw tensor data): the scan is complete
    finally:
        streams[0].close()
    return PickleScan(strings, sorted(set(found)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_file(path: str | Path) -> str:
    """:func:`sniff` plus, for torch zips, refusing pickles that import anything but tensors."""
    kind = sniff(path)
    if kind in ("torch zip", "torch pickle"):
        bad = scan_torch_file(path).unsafe_globals
        if bad:
            raise CheckpointError(
                f"{path}: the pickle would import {', '.join(bad[:4])}: it contains code or "
                "objects beyond plain tensors and will never be loaded (nothing was executed)"
            )
    return kind


def check_set(root: str | Path) -> CheckpointSet:
    """Every cheap check of a set, in order; raises one :class:`CheckpointError` listing all.

    config.yaml must exist, parse and have the IndexTTS2 sections; an IndexTTS 1.x set is named
    as such (from config.yaml or gpt.pth's tensor names) instead of listing what it lacks; every
    required file must exist and pass :func:`check_file`. Returns the opened set.
    """
    root = Path(root)
    cs = CheckpointSet.open(root)  # FileNotFoundError naming config.yaml and its source
    from_config = indextts1_evidence(cs.config)
    from_gpt = indextts1_evidence(gpt_tensors=gpt_tensor_names(cs))
    if from_config or from_gpt:
        where = root if from_config else cs.path("gpt")
        raise CheckpointError(indextts1_message(where, from_config + from_gpt))
    problems = [f"{cs.path('config')}: {p}" for p in config_problems(cs.config)]
    missing = {key: source for key, _path, source in missing_files(root)}
    for key, path in cs.required_paths().items():
        spec = FILES[key.split("/")[0]]
        if key == "config" or spec.optional:
            continue
        whole_folder = spec.kind == "dir" and "/" not in key
        if key in missing and (whole_folder or not path.is_dir()):
            problems.append(f"{path}: missing ({missing[key]})")
            continue
        if whole_folder:
            continue
        try:
            check_file(path)
        except CheckpointError as exc:
            problems.append(str(exc))
    if len(problems) == 1:
        raise CheckpointError(problems[0])
    if problems:
        raise CheckpointError(
            f"{root}: {len(problems)} problem(s) with the checkpoint files:\n  "
            + "\n  ".join(problems)
        )
    return cs


def gpt_tensor_names(cs: CheckpointSet) -> dict[str, None] | None:
    """gpt.pth's tensor names (from its pickle, unexecuted), or None when they cannot be seen."""
    path = cs.path("gpt")
    try:
        scan = scan_torch_file(path)
    except CheckpointError:
        return None
    return dict.fromkeys(s for s in scan.strings if "." in s and not s.startswith("torch"))
