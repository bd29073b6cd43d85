"""`DataConfig`: how the xP3 family is read and mixed (gin: `mixtures.DataConfig.*`, bound by
`gin/mixtures/*.gin`). The entry points build it from gin and hand it to the registration of the
mixture they run (`mixtures.register_for(name, config)`); without gin, the defaults below and the
environment variable XP3_DATA_DIR apply.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional, Sequence, Union

from xmtf_jax.errors import UserError

MT5_VOCABULARY_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the data is, how to tokenize it, how strict to be and how to mix it.

  data_dir: root of the variant in use (gin macro XP3_DATA_DIR); None reads $XP3_DATA_DIR.
  data_dirs: per-variant roots ({'p3': 'gs://...'}) when a run mixes several variants.
  vocabulary_path: SentencePiece model (gin VOCABULARY_PATH); mT5's by default, extra_ids=0.
  add_eos_to_inputs: append EOS to inputs too (the paper's evaluation feeds inputs without EOS).
  strict: bad lines/folders raise an error naming file and line; False skips and counts them.
  languages: restrict to these language folders (and require them); None = all present.
  mixing_scheme: 'examples_proportional' | 'temperature' | 'explicit' (gin MIXING_RATE).
  mixing_cap: cap on examples per task for the first two schemes (T0 used 500_000).
  mixing_temperature: T of rate ∝ size^(1/T).
  mixing_weights: {language: weight} or a preset name ('bloomz') for 'explicit'.
  line_counts_cache_dir: where counts go when the data root is read-only.
  shuffle_buffer_size: per-task shuffle buffer of tokenized examples (after a 1024-line shuffle of
    raw lines in the source; xP3's merged files are shuffled already).
  """
  data_dir: Optional[str] = None
  data_dirs: Mapping[str, str] = dataclasses.field(default_factory=dict)
  vocabulary_path: str = MT5_VOCABULARY_PATH
  add_eos_to_inputs: bool = False
  strict: bool = True
  languages: Optional[Sequence[str]] = None
  mixing_scheme: str = "examples_proportional"
  mixing_cap: Optional[int] = None
  mixing_temperature: float = 1.0
  mixing_weights: Union[str, Mapping[str, float], None] = None
  line_counts_cache_dir: Optional[str] = None
  shuffle_buffer_size: int = 1_000

  def root_for(self, variant: str) -> str:
    """The data root of `variant`: data_dirs[variant], else data_dir, else $XP3_DATA_DIR."""
    root = self.data_dirs.get(variant) or self.data_dir or os.environ.get("XP3_DATA_DIR")
    if not root:
      raise UserError(
          f"no data root for the {variant!r} mixture: set the gin macro XP3_DATA_DIR (e.g. "
          f"--gin.XP3_DATA_DIR=\"'gs://my-bucket/xP3'\") or the environment variable XP3_DATA_DIR "
          "to the folder you downloaded it to")
    return root
