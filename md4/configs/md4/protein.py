"""MD4 on protein sequences (amino acids), with MD4-S's network.

Data:  gsutil cp -r gs://maskdiff/protein/ ~/md4_data/   (or FASTA / one-per-line text
       files in ~/md4_data/protein/; see md4/data/protein.py)
Run:   python md4/main.py --config=md4/configs/md4/protein.py --workdir=expt/protein
Sequences longer than 512 residues are cropped at random offsets for training; shorter
ones are padded, and padding is never masked nor counted in the loss. Samples are written
as FASTA (samples/step_*.fasta) with lengths drawn from the training lengths.
Hardware: batch 256 x 512 residues on 8 accelerators (TPU v4/v5 or A100/H100).
Expected: the paper reports no protein result; valid_loss is bits per residue (the
uniform over the 25 letters is 4.64 bits).
"""

from md4.configs.md4 import openwebtext


def get_config():
  config = openwebtext.get_config()
  config.data.dataset = 'protein'
  config.data.data_shape = (512,)
  config.batch_size = 256
  config.eval_batch_size = 256
  return config
