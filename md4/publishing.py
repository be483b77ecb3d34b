"""Publishing a model: a run's checkpoint as an exported folder (md4.exported) with a model
card that reports the run's held-out numbers, and that folder on the Hugging Face hub.

md4/export.py calls `export_run` and `push_to_hub`; md4.mdlm writes its imported models'
cards with `model_card` too.
"""

import json
import os

from md4 import exported
from md4 import run as run_lib
from md4.data import tokenizer

METRICS_FILE = 'metrics.jsonl'  # md4.reporting's record of a run, one JSON object a step


def held_out_numbers(workdir: str, step: int) -> dict:
  """The eval metrics that training logged at `step` in workdir/metrics.jsonl, or at the
  latest earlier step with an eval: {'step': s, 'metrics': {'valid_loss': ..., ...}}; {} if
  none (no metrics.jsonl, or no eval by then)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  evals = [r for r in records
           if r['step'] <= step and any(not k.startswith('train') and k.endswith('_loss')
                                        for k in r)]
  if not evals:
    return {}
  record = max(evals, key=lambda r: r['step'])
  return {'step': record['step'],
          'metrics': {k: v for k, v in record.items()
                      if k != 'step' and not k.startswith('train')
                      and not k.startswith('steps_per') and not k.startswith('learning')}}


def _held_out_table(held_out: dict, gpt2: bool, unit: str) -> list[str]:
  metrics = held_out.get('metrics', {})
  losses = sorted(k for k in metrics if k.endswith('_loss'))
  if not losses:
    return ['No held-out evaluation was logged up to this step.']
  lines = [f'Negative ELBO at step {held_out["step"]} (training\'s eval), {unit}:', '',
           '| split | bits | perplexity ≤ |' if gpt2 else '| split | bits |',
           '|---|---|---|' if gpt2 else '|---|---|']
  for key in losses:
    row = f'| {key.removesuffix("_loss")} | {metrics[key]:.4f} |'
    lines.append(row + (f' {2.0**metrics[key]:.2f} |' if gpt2 else ''))
  return lines


def model_card(title: str, summary: str, meta: dict, config) -> str:
  """A model card (README.md with hub front matter): what the model is, its held-out
  numbers, its data and tokenizer, and the commands that evaluate and sample it."""
  entry = meta['data']
  gpt2 = entry['tokenizer']['type'] == 'gpt2'
  unit = 'bits per dimension' if len(entry['data_shape']) == 3 else 'bits per token'
  lines = ['---', 'library_name: md4', 'tags:', '- masked-diffusion', '- md4', '- jax',
           '---', '', f'# {title}', '', summary, '',
           f'- model: `{config.model_type}`, network `{config.network.type}`,'
           f' {meta["num_params"]:,} parameters; noise schedule'
           f' `{config.model.get("noise_schedule", "learned")}`',
           f'- data: `{entry["dataset"]}`, examples of shape {tuple(entry["data_shape"])},'
           f' {entry["vocab_size"]} token ids (the mask id is {entry["vocab_size"]})',
           f'- tokenizer: {json.dumps(entry["tokenizer"])}', '',
           '## Held-out numbers', '', *_held_out_table(meta.get('held_out', {}), gpt2, unit),
           '', '## Use', '', 'With md4 (this folder, or a download of it, as the workdir):', '',
           '```bash', 'python md4/evaluate.py --workdir=THIS_FOLDER',
           'python md4/sample.py --workdir=THIS_FOLDER --num_samples=4', '```', '',
           f'Files: `{exported.WEIGHTS_FILE}` (float32 parameters named by their path in the'
           f' parameter tree), `config.json` (md4\'s config), `{exported.EXPORT_FILE}`'
           ' (what rebuilds the model without its data).', '']
  return '\n'.join(lines)


def export_run(run: run_lib.Run, output: str) -> str:
  """Writes `run` (a loaded training run) as an exported folder at `output`, with the
  held-out numbers its training logged at that step in the model card; returns output."""
  if os.path.abspath(output) == os.path.abspath(run.workdir):
    raise ValueError(f'--output {output} is the run\'s workdir; export to another folder')
  meta = {'step': run.step, 'params': run.which_params,
          'source': f'md4 run {os.path.abspath(run.workdir)}',
          'data': exported.data_entry(run.config.data.dataset, run.info),
          'held_out': held_out_numbers(run.workdir, run.step)}
  meta['num_params'] = sum(v.size for v in exported.flatten_params(run.params).values())
  title = f'{run.config.model_type.upper()} on {run.config.data.dataset}'
  summary = (f'Exported by md4 from the run `{os.path.basename(os.path.abspath(run.workdir))}`'
             f' at step {run.step}, {run.which_params.upper()} parameters.')
  return exported.write(output, run.config, run.params, meta,
                        model_card(title, summary, meta, run.config))


def push_to_hub(folder: str, repo_id: str, private: bool = False, api=None) -> str:
  """Uploads an exported folder to the hub model repository `repo_id` (created if needed,
  private if asked) with huggingface_hub's HfApi (or `api`); returns the repository's URL.
  Fails at once when the hub cannot be reached."""
  if not exported.is_exported(folder):
    raise FileNotFoundError(f'{folder} is not an exported model (no {exported.EXPORT_FILE})')
  if api is None:
    if not tokenizer.hub_reachable():
      raise ConnectionError(f'the Hugging Face hub is not reachable (or HF_HUB_OFFLINE is'
                            f' set), so {folder} cannot be pushed to {repo_id}; connect and'
                            ' log in (`hf auth login`), or upload the folder by hand')
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    api = huggingface_hub.HfApi()
  url = api.create_repo(repo_id=repo_id, repo_type='model', private=private, exist_ok=True)
  api.upload_folder(repo_id=repo_id, repo_type='model', folder_path=folder,
                    commit_message='Upload a model exported by md4')
  return str(url)
