"""Feature sets from raw recordings (optional extra: `pip install -e .[features]`).

Turns a new recording into the label-aligned CSVs the core reads, on the 250 ms label grid:
`egemaps` (openSMILE eGeMAPSv02 functionals over a window centred on each grid point),
`egemaps_lld` (its 25 low-level descriptors averaged to 4 Hz) and `bert` (sentence embeddings of
a transcript, held over each span, zeros where nobody speaks). Nothing in the core imports this
package; the heavy dependencies load only inside the functions that need them.

  python -m muse_jax.features audio --wav F --id N --out ROOT [--win_s 3.0]
  python -m muse_jax.features text --transcript T --id N --out ROOT --model_dir DIR
  python -m muse_jax.features sample --out DIR     # a synthetic recording, transcript, tiny BERT
  python -m muse_jax.features predict --workdir W --wav F --out DIR   # a model on a recording

`predict` (muse_jax.features.recording) extracts what a trained workdir reads from a recording
and runs its `predictor.Predictor`: the one module of this package that imports the core.
"""
