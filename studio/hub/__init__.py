"""LoRAs from the Hugging Face Hub: search, remote inspection, download, and what is already here.

Everything goes through the real ``huggingface_hub`` client (its HTTP session, ``HfApi``,
``hf_raise_for_status``, ``hf_hub_download`` and the standard cache), pointed wherever ``HF_ENDPOINT`` says.

:class:`HubClient` (one per user/session; cheap to make):

``search(query, wan_version=, task=, sort=, limit=)``
    One ``GET /api/models`` (``search`` = the free text, ``"wan"`` when empty; ``expand`` = the fields
    shown), then Wan-aware filters on what came back (:mod:`studio.hub.card`): LoRAs only, Wan at all,
    Wan2.2 / Wan2.1, I2V / T2V. A filter drops repos *known* to be something else (a Wan2.1 LoRA when 2.2 is
    asked for); repos that say nothing stay in. The README of each shown result is read (its first 32 kB, in
    parallel, at most 5 s, cached by commit; a failure only leaves the summary out) for the card summary and
    trigger words. Results are cached for
    ``cache_ttl_s`` seconds per (query, filters, token). ``HfApi.list_models`` is not used because it takes
    no timeout and retries 429/5xx for about half a minute; the request is the same one it makes.
``files(repo, revision=None, model_config=None)``
    ``HfApi.model_info(files_metadata=True)`` resolves the revision to a commit sha and lists the files with
    sizes and LFS sha256s; each ``.safetensors`` file's header is read with Range requests
    (:mod:`studio.hub.header`, the same validation as local files) and summarised into a
    :class:`~studio.loras.inspect.LoraInfo`; high/low halves are paired with the local library's rules;
    with ``model_config`` each file and item gets a :class:`~studio.loras.compat.Compat`. Headers are cached
    by (repo, sha, file).
``download(repo, files, revision, progress)``
    Pinned to the commit sha (``model_info`` resolves a branch; a full sha already in the cache needs no
    request at all). ``hf_hub_download`` writes each blob to a process-unique ``….incomplete`` file, resumes
    it after a dropped connection within the call, moves it into ``blobs/`` only when complete and links it
    into ``snapshots/<sha>/`` after that, and deletes the partial file when the download fails or is
    cancelled: a snapshot never shows a half file. The file is then checked against the Hub's sha256 (the
    digest is remembered in the studio's sha256 cache, so the library never hashes it again) and recorded in
    the download registry. Files already in the cache are not fetched again.
``missing(stack_or_sources)`` / ``download_sources(sources)`` / ``resolve(source)``
    For presets: the Hub sources that are not in the local cache, fetching exactly those, and the local path
    of one (no network).
``downloaded()`` / ``library_items()``
    What the studio downloaded and is still in the cache, as ``(LoraSource, Path)`` pairs and as library
    items (:class:`HubLibraryItem`, paired like local files) whose ``to_stack_entry`` records the Hub source
    ``LoraSource(repo=, file=, revision=<sha>, sha256=<LFS sha256>)``.

**Download registry.** ``hub-downloads.json`` in the studio cache folder lists the files the studio
downloaded (repo, file, commit sha, sha256, size, when); it is replaced atomically. Paths are not stored: they
are looked up in the Hugging Face cache each time, so a file removed from that cache simply drops out.

**Tokens.** A token is given to the client or per call and kept in memory only: it is passed to
``huggingface_hub`` per request and never written, logged, put in a registry, preset or sidecar (the
registry has no field for it). ``None`` lets ``huggingface_hub`` use ``HF_TOKEN`` (or its own login).

**Failures.** Every Hub failure (offline, DNS, refused connection, timeout, 401/403/404/429/5xx, gated or
private repos, unknown revisions or files) raises :class:`HubError` with
:func:`studio.hub.errors.hub_failure_message`'s sentence; nothing else of the studio depends on the Hub.
Calls take ``timeout_s`` (per request) and never retry with long waits, so a UI worker is never stuck.
"""
