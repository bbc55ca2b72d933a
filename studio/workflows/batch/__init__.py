"""Scene batches: a typed scene file, a crash-safe state, an in-process runner, Ray fan-out and a weight grid.

- :mod:`~studio.workflows.batch.scenes`: the versioned scene file and its resolution into jobs;
- :mod:`~studio.workflows.batch.jobs`: one render of a batch (:class:`Job`) and a batch of them;
- :mod:`~studio.workflows.batch.state`: done / pending / failed per job, written atomically on every change;
- :mod:`~studio.workflows.batch.runner`: the loop that renders what is not done, in-process or on a pool;
- :mod:`~studio.workflows.batch.ray_pool`: Ray actors, one pipeline manager each;
- :mod:`~studio.workflows.batch.grid`: two axes (weights, seeds, steps) rendered as a batch and one labelled video;
- :mod:`~studio.workflows.batch.concat`: the scenes joined into one MP4 with a sidecar listing each part.
"""
