"""Shared defaults: the paper's (Sun et al., MuSe-Wild 2020) hyperparameters.

Every other config starts from this one and changes only what differs. Any field can be overridden
on the command line, e.g. `--config.feature_sets=egemaps,fasttext --config.seed=315`.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()

  # Data: a MuSe-layout release root and where its tfds build lives ('' = $TFDS_DATA_DIR or
  # ~/tensorflow_datasets). Built on first use, rebuilt per feature set when the tree changes.
  c.data_root = ''
  c.data_dir = ''
  c.task = ''  # the task, when data_root holds several (e.g. c3_muse_stress)
  c.feature_sets = ('egemaps',)  # early fusion: joined per frame, in this order
  c.normalize = 'all'  # z-normalise with train stats: 'all', 'none' or 'set1,set2'
  c.add_segment_id = False  # append segment_id as an extra input column
  c.inputs_on_disk = 'auto'  # inputs written to a memory-mapped file as read, not in RAM:
  # 'auto' (when over 1/4 of the machine's memory), 'yes', 'no'
  c.nan_policy = 'zero'  # NaN/Inf feature cells, and cells over max_abs_z train std from
  # the train mean (e.g. 1e30 missing-value markers): 'zero' (set
  # to the train mean, one log line per file) | 'error' (stop)
  c.max_abs_z = 1e3  # that bound, in train std (no real train value reaches sqrt(N))
  c.targets = ('valence',)  # one model predicts these jointly: label folder names of the
  # tree (e.g. arousal, physio-arousal, anno12_EDA) or ('all',)
  # (--config.targets=all)
  c.win_len = 200  # train windows, in frames of the tree's grid (50 s at 4 Hz)
  c.hop_len = 100
  c.batch_size = 1024  # train windows per step (padded with empty rows, never dropped)
  c.micro_batch_size = 0  # > 0: accumulate the step's gradient over slices of this many
  # windows (same result, bounded memory); 0 = whole batch
  c.whole_videos = False  # True: train on whole videos (one window each), as late fusion
  # Late fusion: comma-separated workdirs of finished runs whose per-frame predictions (of
  # `targets`) are input columns, after any feature_sets; see configs/late_fusion.py.
  c.fusion_runs = ''

  # Model (muse_jax.models.Regressor): proj -> self-attention -> (bi)RNN -> MLP head.
  c.model = ml_collections.ConfigDict()
  c.model.name = 'regressor'
  c.model.d_rnn = 64
  c.model.rnn_type = 'lstm'
  c.model.rnn_n_layers = 1
  c.model.rnn_bi = True
  c.model.rnn_dropout = 0.0
  c.model.attn_n_layers = 1
  c.model.n_heads = 8
  c.model.attn_dropout = 0.0
  c.model.pos_encoding = False
  c.model.d_out_fc = 64
  c.model.out_dropout = 0.0
  c.model.out_bias = (0.0,)

  # Optimisation: Adam + ReduceLROnPlateau on (1 - mean devel CCC), early stopping.
  c.loss = 'ccc'  # 'ccc' | 'mse' | 'l1'
  c.loss_weights = ''  # per target: 'w1,w2' in target order or 'name=w,...'
  # (unnamed targets weigh 1); '' = equal
  c.learning_rate = 5e-3
  c.plateau_patience = 5
  c.plateau_factor = 0.5
  c.min_learning_rate = 1e-5
  c.num_epochs = 100
  c.early_stopping_patience = 15
  c.seed = 314  # seeds seed, seed+1, ... (the paper's 314, 315, ...)
  c.num_seeds = 1  # models trained side by side (in one compiled step)
  c.seed_loop = 'auto'  # how that step runs them: 'vmap' (one op S times larger: for
  # GPU/TPU), 'map' (one after the other: CPU), 'auto' = by device
  c.sweep_ensemble = 5  # a sweep's ensemble: the mean of its best k members by devel
  c.sweep_storage = ''  # --sweep_search=optuna: the study's database URL ('' =
  # sqlite:///<workdir>/optuna.db)
  c.members = ''  # members with their own seed and schedule on the seed axis (a
  # JSON list; sweeps write it: muse_jax.sweep), '' = the seeds
  c.data_seed = -1  # shuffling order of train windows; -1 = seed
  c.eval_seed = 'best'  # what the run's predictions are (training's end, evaluate,
  # predict, hence late fusion's inputs): 'best' = the seed with
  # the best devel CCC (the paper), 'ensemble' = the mean of the
  # seeds' predictions, or a seed index '0', '1', ...
  c.nonfinite_policy = 'stop'  # NaN/Inf loss or gradient: 'stop' (exit, keep last good
  # checkpoint) | 'skip' (drop that step, count it in the logs)

  # Devices: batches are sharded over the first num_devices devices (0 = all of them).
  c.num_devices = 0
  c.member_devices = 1  # > 1: the seed/member axis sharded over this many devices (a
  # sweep's members on different devices; must divide num_seeds
  # and the devices), data parallel within; 1 = replicated
  c.attention = 'auto'  # attention core: 'blocked' (cache-sized blocks: CPU), 'plain'
  # (one kernel: GPU/TPU), 'auto' = by device; or
  # jax.nn.dot_product_attention: 'dot_product' (XLA's kernel),
  # 'cudnn' (flash attention, bfloat16, GPU); these two have no
  # attention dropout (muse_jax.ops.attention)
  # Process-wide, applied once by the entry points (muse_jax.runtime.configure):
  c.reuse_cpu_buffers = True  # CPU: keep XLA's big buffers allocated across steps instead of
  # page-faulting them in every step (runtime.host_memory)
  c.compilation_cache_dir = 'auto'  # compiled steps kept on disk for the next run: 'auto' =
  # ~/.cache/muse_jax/xla, a folder, or 'none' (runtime)

  # Outputs.
  c.num_plot_videos = 3  # devel videos plotted (prediction vs label) at the end
  c.bootstrap_samples = 1000  # every reported partition CCC gets a 95% interval from this many
  # resamples of the partition's videos (0 = off)
  c.bootstrap_seed = 0  # the resamples' seed: the same predictions, the same interval
  return c
