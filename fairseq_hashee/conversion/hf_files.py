"""Reading a Hugging Face checkpoint directory: config, weights, vocabulary.

Weights come from ``model.safetensors`` (read here, no extra dependency: an
8-byte header length, a JSON header of names, dtypes, shapes and offsets, then
raw little-endian data) or ``pytorch_model.bin`` (torch.load with pickle safety
on). Every problem is a one-line ``HashEEError`` naming the file.
"""

import json
import os
import pickle
import struct
from typing import Dict, List

import torch

from ..errors import HashEEError

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_json_object(path: str, what: str) -> dict:
    """A JSON object from ``path``; ``what`` names the file in errors ("config", ...)."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except FileNotFoundError:
        raise HashEEError(f"{path}: no such file (expected a JSON {what})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HashEEError(f"{path}: not a JSON {what} ({err})") from None
    if not isinstance(value, dict):
        raise HashEEError(f"{path}: not a JSON object (expected a JSON {what})")
    return value


def load_config(directory: str) -> dict:
    return read_json_object(os.path.join(directory, "config.json"), "config")


def read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    with open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 8:
        raise HashEEError(f"{path}: truncated safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise HashEEError(f"{path}: safetensors header of {header_len} bytes runs past the end of the file")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HashEEError(f"{path}: garbled safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise HashEEError(f"{path}: garbled safetensors header (not a JSON object)")
    body = memoryview(data)[8 + header_len :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            start, end = entry["data_offsets"]
            shape = [int(n) for n in entry["shape"]]
        except (KeyError, TypeError, ValueError):
            raise HashEEError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if any(n < 0 for n in shape):
            raise HashEEError(f"{path}: tensor {name!r} has a negative dimension in shape {shape}")
        if not 0 <= start <= end <= len(body):
            raise HashEEError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
        count = 1
        for n in shape:
            count *= n
        if (end - start) != count * torch.empty((), dtype=dtype).element_size():
            raise HashEEError(f"{path}: tensor {name!r} has {end - start} bytes for shape {shape}")
        raw = torch.frombuffer(bytearray(body[start:end]), dtype=torch.uint8)
        tensors[name] = raw.view(dtype).reshape(shape)
    return tensors


def load_weights(directory: str) -> Dict[str, torch.Tensor]:
    """The checkpoint's state dict, from whichever weight file the directory has."""
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        if name.endswith(".safetensors"):
            return read_safetensors(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise HashEEError(f"{path}: cannot be loaded as a state dict ({reason})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise HashEEError(f"{path}: not a state dict of tensors")
        return state
    raise HashEEError(f"{directory}: no {' or '.join(WEIGHT_FILES)}")


def load_vocab(directory: str) -> List[str]:
    """Symbols by id: BERT's ``vocab.txt`` (one per line) or BART's ``vocab.json``."""
    txt, js = os.path.join(directory, "vocab.txt"), os.path.join(directory, "vocab.json")
    if os.path.exists(txt):
        try:
            with open(txt, encoding="utf-8", newline="") as handle:
                symbols = [line.rstrip("\r\n") for line in handle]
        except UnicodeDecodeError as err:
            raise HashEEError(f"{txt}: not UTF-8 (byte {err.start})") from None
        return symbols
    if os.path.exists(js):
        mapping = read_json_object(js, "vocabulary")
        if not all(isinstance(index, int) for index in mapping.values()):
            raise HashEEError(f"{js}: ids must be integers")
        ids = sorted(mapping.values())
        if ids != list(range(len(ids))):
            raise HashEEError(f"{js}: ids are not 0..{len(ids) - 1} without gaps")
        symbols = [None] * len(ids)
        for symbol, index in mapping.items():
            symbols[index] = symbol
        return symbols
    raise HashEEError(f"{directory}: no vocab.txt (CPT, Chinese BART) or vocab.json (English BART)")
