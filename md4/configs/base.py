"""Defaults shared by every config; each field is commented here once.

A dataset config imports `get_config` from here and overrides what differs.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # one seed for initialisation, data order, noise, eval and samples
  config.model_type = 'md4'  # key of md4.models.MODELS: 'md4', 'genmd4', or 'ar'

  config.data = ml_collections.ConfigDict()
  config.data.dataset = 'shakespeare'  # key of md4.data.DATASETS
  config.data.data_dir = '~/md4_data'  # where text8.zip / train.npy / TFDS datasets live
  config.data.data_shape = (256,)  # one example: (sequence length,) or images (H, W, C)
  # Labelled images (digits, cifar10, imagenet64): batches carry labels, the network is
  # class-conditional and samples are drawn one grid row per class.
  config.data.class_conditional = False
  # Number of token ids; None takes it from the dataset. Required by 'array'. A larger
  # value gives the model ids the data never holds (the original's GenMD4 OpenWebText
  # config has 50,259 for GPT-2's 50,257).
  config.data.vocab_size = config_dict.placeholder(int)
  # Token streams (shakespeare, text8, array): a training window starts every this many
  # tokens, and each epoch visits all of them in a new order; 1: every offset (text8's
  # paper recipe); 0: non-overlapping chunks. Eval splits always use non-overlapping chunks.
  config.data.train_window_stride = 0

  config.model = ml_collections.ConfigDict()  # keyword arguments of the model class
  config.model.noise_schedule = 'linear'  # 'linear', 'cosine' or 'polyK' (e.g. poly3)
  config.model.cont_time = True  # continuous-time ELBO; False: the T-step ELBO
  config.model.timesteps = 1000  # T of the discrete-time ELBO (cont_time=False)
  config.model.antithetic_time_sampling = True  # stratified t over the batch
  # Estimator of the continuous-time ELBO, for training and eval: 'time' (the paper's: t ~ U,
  # independent masks) or 'mask_count' (the number of masks ~ U, t from its posterior): the
  # same expectation, with far less variance at small t. See md4.models.md4.
  config.model.elbo_estimator = 'time'
  # Training only: draw t (or the mask count) from u^p instead of u ~ U(0, 1); p < 1 trains
  # on more heavily masked examples, a reweighting of the ELBO (see md4.models.md4.MD4).
  config.model.train_time_power = 1.0

  config.network = ml_collections.ConfigDict()  # backbone; `type` picks it
  config.network.type = 'transformer'  # key of md4.networks.NETWORKS
  config.network.n_layers = 12
  config.network.num_heads = 12
  # Per head; width = num_heads * feature_dim; also the width of the time embedding.
  config.network.feature_dim = 64
  config.network.mlp_type = 'glu'  # 'glu', 'geglu' or 'swiglu'; also the activation before adaLN
  config.network.mlp_dim = 0  # MLP hidden width F; 0: 8/3 of the width, rounded up to 32
  # Input embedding width: 0 embeds token ids in the model width (with dropout); E > 0 in E,
  # then a dense layer to the model width (the original's text8 network, E = feature_dim).
  config.network.embed_dim = 0
  # RMSNorm on each head's queries and keys (QK-norm), bounding the attention logits.
  config.network.qk_norm = False
  # > 0: GPT-2's initialisation, N(0, init_std²) for the embedding and every fan-in-scaled
  # weight, the residual outputs' divided by sqrt(2 n_layers) with depth_scaled_init; 0:
  # the original's (LeCun-normal projections, embedding N(0, 1/D)).
  config.network.init_std = 0.0
  config.network.cond_type = 'adaln_zero'  # time conditioning: 'adaln' or 'adaln_zero'
  config.network.time_features = 't'  # 't', or 'none' for an unconditioned network
  # Dropout on the embeddings and attention probabilities, and channel-wise (one mask per
  # example and channel) on the attention and MLP outputs, as the original's.
  config.network.dropout_rate = 0.0
  # MLP weights of variance 2/(n_layers fan_in) (with init_std: see above)
  config.network.depth_scaled_init = True
  config.network.causal = False  # left-to-right attention (the autoregressive baseline)
  # Canon layers (Allen-Zhu, 2025): residual depthwise convolutions over canon_width
  # neighbouring positions (0: none, else odd), zero-initialised, at canon_positions among
  # 'attn_in', 'qkv', 'mlp_in', 'mlp_hidden' (md4.networks.transformer.CANON_POSITIONS).
  config.network.canon_width = 0
  config.network.canon_positions = ('mlp_in',)
  # Compute dtype, 'float32' or 'bfloat16' (accelerators); parameters, optimizer state,
  # logits and the loss stay float32.
  config.network.dtype = 'float32'
  # Operands of the dense layers' matrix products, accumulated in float32: '' (the compute
  # dtype) or 'bfloat16', which with dtype 'float32' rounds only the products' inputs:
  # faster on CPUs with bfloat16 matrix units (AMX), slower on others. The Shakespeare
  # config's `:amx` variant (--config=md4/configs/md4/shakespeare.py:amx) sets it.
  config.network.matmul_dtype = ''
  config.network.remat_policy = 'none'  # recompute blocks in the backward pass: 'none', 'full', 'dots'
  config.network.scan_layers = False  # scan one block over depth: compile time flat in n_layers
  # Attention kernel: 'auto' (cuDNN on GPUs in bfloat16, 'einsum' on CPUs, else 'xla'),
  # 'xla' or 'cudnn' (jax.nn.dot_product_attention's), 'einsum' (md4.networks.transformer's)
  config.network.attention_impl = 'auto'

  # Sharding with --sharded (without it: data parallel over every device, parameters
  # replicated). Mesh axes (data, fsdp, tensor); one size may be -1, "the remaining devices".
  config.mesh_shape = (1, -1, 1)
  # Logical axis (named by the networks' parameters and activations) -> mesh axes.
  # The batch splits over data x fsdp; parameters shard along 'embed' (or the time
  # embedding's 'cond') over fsdp (FSDP), and along heads / MLP / vocabulary over tensor
  # (Megatron-style). A mesh axis serves one dimension of a tensor; later rules that
  # would reuse it are skipped.
  config.axis_rules = (
      ('batch', ('data', 'fsdp')),
      ('embed', 'fsdp'), ('cond', 'fsdp'),
      ('heads', 'tensor'), ('mlp', 'tensor'), ('vocab', 'tensor'),
      ('act_heads', 'tensor'), ('act_mlp', 'tensor'), ('act_vocab', 'tensor'),
  )

  config.opt = ml_collections.ConfigDict()
  config.opt.optimizer = 'adamw'  # 'adamw' (b1 = 0.9), or 'muon' for the blocks' matrices
  config.opt.muon_learning_rate = 0.02  # peak, for opt.optimizer = 'muon'
  # Operands of Muon's Newton-Schulz products, accumulated in float32: 'float32' or
  # 'bfloat16' (as in Jordan et al.'s reference; faster on CPUs with AMX units only).
  config.opt.muon_dtype = 'float32'
  config.opt.learning_rate = 3e-4  # peak
  config.opt.lr_schedule = 'cosine'  # after warm-up: 'cosine' or 'linear' (to 0), 'constant'
  config.opt.warmup_steps = 2000  # linear warm-up from 0
  config.opt.b2 = 0.999
  config.opt.weight_decay = 0.0  # decoupled
  # What weight decay applies to: 'matrices' (kernels and embeddings) or 'all' parameters
  # (the original's optax.adamw: norm scales, biases and GenMD4's schedule powers too).
  config.opt.weight_decay_mask = 'matrices'
  config.opt.grad_clip = 0.0  # global-norm clipping; 0 turns it off
  config.opt.ema_rate = 0.9999  # EMA of the parameters, used for eval and sampling
  # EMA decay min(ema_rate, (1 + step)/(10 + step)), so that short runs average recent
  # weights; False: ema_rate from the first step (the original's).
  config.opt.ema_warmup = True

  # How training runs, md4/sample.py and md4/evaluate.py draw samples (md4.sampling).
  config.sampling = ml_collections.ConfigDict()
  # 'ancestral', 'topp', 'mean', 'first_hitting', 'confidence', 'threshold' or 'remdm'
  # (md4.sampling.SAMPLERS)
  config.sampling.sampler = 'ancestral'
  # 'uniform' or 'cosine' spacing of t; for 'confidence', the fraction left masked per step
  config.sampling.sampling_grid = 'cosine'
  config.sampling.timesteps = 256  # reverse steps per sample (per block with block_size)
  config.sampling.topp = 0.98  # nucleus mass for sampler='topp'
  config.sampling.topk = 0  # draw only from the k most likely tokens; 0: all
  config.sampling.temperature = 1.0  # μθ ∝ exp(logits / temperature)
  config.sampling.num_samples = 16  # samples written at each sampling step
  # Classifier-free guidance weight w for class-conditional models; 0: plain conditional.
  config.sampling.guidance_scale = 0.0
  # Exact categorical draws, in float32 arithmetic with noise as fine as float64's, made in
  # two levels (a block of ~√V tokens, then a token of it) so that they cost one pass over
  # the logits, not a random number per token (md4.sampling.draws). False: Gumbel-max with
  # float32 noise on every token, slower, and it never draws a token more than ~16 nats
  # below the winner, which lowers the effective temperature (Zheng et al., 2024).
  config.sampling.float64_draws = True
  # Skip the network when no token changed since its last call (reverse-step samplers);
  # exact only for a network that ignores t (network.time_features='none').
  config.sampling.cache = False
  # Semi-autoregressive decoding in blocks of this many positions, left to right, the
  # network seeing at most the training length; longer sequences then work. 0: no blocks.
  config.sampling.block_size = 0
  # sampler='confidence': Gumbel noise of this scale on the confidences, annealed to 0
  # (MaskGIT's choice temperature); 0: LLaDA's plain low-confidence remasking.
  config.sampling.confidence_noise = 0.0
  # samplers 'confidence' and 'threshold': a position's confidence, 'max' (its most likely
  # token's probability) or 'drawn' (the drawn token's, LLaDA's: biased towards likely
  # tokens, it collapses unconditional text); md4.sampling.samplers.CONFIDENCES.
  config.sampling.confidence_score = 'max'
  # sampler='threshold' (Fast-dLLM): each call reveals every masked position at least this
  # confident, and at least one; NFE then depends on the data.
  config.sampling.threshold = 0.9
  # sampler='remdm': η of ReMDM-cap, the most a revealed token is remasked per step.
  config.sampling.remdm_eta = 0.02

  # Self-distillation through time (md4.distill; SDTT, Deschenaux & Gulcehre, 2024): with
  # teacher_workdir set, the run is a student that starts from that run's EMA parameters and
  # learns to take in one reverse step what its teacher takes in two, on the time grid
  # sampling.sampling_grid. Round r (of `rounds`, each `steps_per_round` train steps)
  # distils a teacher of teacher_steps / 2^r steps into a student of half as many; from
  # round 2 on the teacher is the student as the round begins. The last student samples
  # with teacher_steps / 2^rounds steps (set sampling.timesteps to that).
  config.distill = ml_collections.ConfigDict()
  config.distill.teacher_workdir = ''  # '' : an ordinary training run
  config.distill.teacher_steps = 256
  config.distill.rounds = 4
  config.distill.substeps = 2  # teacher steps per student step: each round divides by this
  config.distill.steps_per_round = 1000
  # How the student's μ is compared with the target at each masked position: a key of
  # md4.distill.DIVERGENCES ('kl_reverse': KL(student || target), SDTT's best; 'kl_forward',
  # 'tvd', 'mse' of log-probabilities).
  config.distill.divergence = 'kl_reverse'
  # The target: 'sdtt' (the teacher's μ at the step that revealed the position, or at its
  # second step) or 'two_step' (an unbiased estimate of the teacher's two-step distribution;
  # with 'kl_forward' only). See md4.distill.TARGETS.
  config.distill.target = 'sdtt'

  config.batch_size = 512  # global batch, over all devices and hosts
  config.num_microbatches = 1  # gradient accumulation: batch_size / this per pass
  config.num_train_steps = 1_000_000
  config.eval_batch_size = 512  # global; every full batch of each eval split is used
  # Draws of t (or the mask count) and masks per eval example: the eval ELBO's Monte-Carlo
  # noise falls as 1/sqrt(eval_repeats), its time grows in proportion.
  config.eval_repeats = 1
  config.log_every_steps = 500  # train metrics are averaged over this many steps
  config.eval_every_steps = 10_000
  config.sample_every_steps = 50_000
  config.checkpoint_every_steps = 5_000
  config.keep_checkpoints = 3  # newest checkpoints kept
  config.check_nans = False  # stop with an error at the first non-finite metric
  return config


def unet_network(network_type='unet') -> ml_collections.ConfigDict:
  """config.network for the image backbones md4.networks.unet.UNet and uvit.UViT."""
  network = ml_collections.ConfigDict()
  network.type = network_type  # 'unet' (the paper's CIFAR-10 network) or 'uvit' (ImageNet-64)
  # Channels of every residual block, the embedding width of one channel value and the
  # width of the time (and label) conditioning vector.
  network.feature_dim = 128
  network.n_layers = 32  # residual blocks at full resolution going down (one more going up)
  network.dropout_rate = 0.1  # residual blocks (and the U-ViT's DiT)
  network.label_dropout = 0.1  # class-conditional training: label -> null class w.p. this
  if network_type == 'uvit':
    network.n_dit_layers = 20  # DiT blocks on 2x2 patches between the two residual paths
    network.dit_hidden_size = 768  # their width
    network.dit_num_heads = 12
  return network
