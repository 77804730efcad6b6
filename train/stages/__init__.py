"""The stages of an experiment, side by side: each trains or evaluates one thing into
`<workdir>/<stage>/` on the shared layer of train/ (loop, frozen, models, attack) and imports no
other stage. Each has `validate(config)` (start-up checks), `identity(config, datasets)` (what
fixes its results: a finished stage is skipped only for the same one) and `run(config, workdir,
datasets, mesh) -> results` (writes `<workdir>/<stage>/results.json`, its identity included).
"""
