"""One sentence for each way a Hugging Face Hub call can fail.

``huggingface_hub`` often wraps the real cause (``snapshot_download`` turns an
``OfflineModeIsEnabled`` or an HTTP 429 into a ``LocalEntryNotFoundError`` whose
``__cause__`` is the real error), so the chain of causes is searched for the most
telling one.
"""

from __future__ import annotations

import socket


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


_TOKEN_REFUSED = "The Hugging Face Hub refused the access token; check HF_TOKEN or the token you typed in."


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def hub_failure_message(exc: BaseException, *, repo: str | None = None, action: str = "download") -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = repo or "the repository"
    chain = list(_chain(exc))
    statuses = [s for s in (_status_of(e) for e in chain) if s is not None]
    if constants.HF_HUB_OFFLINE or any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return f"The Hugging Face Hub is switched off (HF_HUB_OFFLINE is set); unset it to {action} from the Hub."
    # LocalEntryNotFoundError only says "not in the cache either"; its cause is the real story.
    chain = [e for e in chain if not isinstance(e, LocalEntryNotFoundError)] or chain
    for e in chain:
        if isinstance(e, GatedRepoError):
            return (
                f"{what} needs you to accept its licence on huggingface.co and an access token "
                "(set HF_TOKEN or type one in); then try again."
            )
        if isinstance(e, RevisionNotFoundError):
            return f"That revision of {what} does not exist on the Hugging Face Hub; check the revision."
        if isinstance(e, EntryNotFoundError):
            return f"That file is not in {what} on the Hugging Face Hub; refresh the file list."
        if isinstance(e, RepositoryNotFoundError):
            if repo is None:  # not about one repo (a search): a refused token, or a wrong endpoint
                if 401 in statuses:
                    return _TOKEN_REFUSED
                return (
                    f"The Hugging Face Hub did not find what was asked for (HTTP {statuses[0] if statuses else 404}); "
                    "check HF_ENDPOINT and try again."
                )
            return f"{what} was not found on the Hugging Face Hub; check the name or your access token."
    for e in chain:
        status = _status_of(e)
        if status == 401:
            if repo is None:
                return _TOKEN_REFUSED
            return f"The Hugging Face Hub refused the access token for {what}; check HF_TOKEN or the token you typed in."
        if status == 403:
            if repo is None:
                return (
                    "Your access token may not do this (HTTP 403); check its permissions on huggingface.co."
                )
            return (
                f"Your access token may not read {what} (HTTP 403); check its permissions on huggingface.co."
            )
        if status == 429:
            return "The Hugging Face Hub is rate-limiting requests (HTTP 429); wait a minute and try again."
        if status is not None and status >= 500:
            return (
                f"The Hugging Face Hub had a server error (HTTP {status}); it may be having trouble, "
                "try again in a few minutes. The rest of the studio keeps working."
            )
        if status is not None and 400 <= status < 500:
            about = f" for {repo}" if repo else ""
            return (
                f"The Hugging Face Hub refused the request{about} (HTTP {status}); check the name and "
                "revision, and try again."
            )
    if any(isinstance(e, (TimeoutError, socket.timeout)) or "Timeout" in type(e).__name__ for e in chain):
        reason = "it did not answer in time"
    elif any(isinstance(e, socket.gaierror) for e in chain):
        reason = "no connection: its host name could not be looked up"
    else:
        reason = "no connection"
    return (
        f"The Hugging Face Hub cannot be reached ({reason}); check the network connection and try again. "
        "The rest of the studio keeps working."
    )
