"""Fail fast, in one line, when weights would need a download that cannot happen.

Hub libraries retry unreachable hosts for a long time (timm: about 50 s) and then
raise errors that do not say what to do. Here a load first asks whether the
network may be used at all: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set
means no, and otherwise a probe of the host answers within
:data:`PROBE_TIMEOUT` seconds. When the host is unreachable the Hugging Face
libraries run in their offline mode, so cached files still load and missing
ones fail at once; the failure becomes an :class:`OfflineModelError` naming the
spec and what to do.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit

from ..errors import OfflineModelError, UserError

#: Seconds a reachability probe may take in total (DNS, connect and first answer).
PROBE_TIMEOUT = 2.0
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}
_probed: dict[str, bool] = {}


def offline_requested() -> bool:
    """The user asked for no network: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_ENV)


def hf_endpoint() -> str:
    """The Hugging Face endpoint huggingface_hub is configured with (``HF_ENDPOINT``)."""
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _probe(url: str, answer: list[bool]) -> None:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT):
            answer.append(True)
    except urllib.error.HTTPError:
        answer.append(True)  # the host answered, even if not with 200
    except (urllib.error.URLError, OSError, ValueError):
        answer.append(False)


def reachable(url: str, timeout: float | None = None) -> bool:
    """Whether ``url``'s host answers an HTTP request within ``timeout`` seconds (cached per host).

    The probe runs in a daemon thread so a hanging DNS lookup cannot stretch it;
    urllib honours the usual proxy environment variables.
    """
    parts = urlsplit(url)
    key = f"{parts.scheme}://{parts.netloc}"
    if key in _probed:
        return _probed[key]
    answer: list[bool] = []
    thread = threading.Thread(target=_probe, args=(key + "/", answer), daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT if timeout is None else timeout)
    _probed[key] = bool(answer and answer[0])
    return _probed[key]


def network_allowed(url: str) -> bool:
    """True when downloads from ``url`` may be attempted: not offline and the host answers."""
    return not offline_requested() and reachable(url)


def offline_reason(url: str) -> str:
    """Why downloads from ``url`` cannot happen, for error messages."""
    if offline_requested():
        return "HF_HUB_OFFLINE is set"
    return f"{urlsplit(url).netloc or url} is unreachable"


@contextmanager
def _forced_hf_offline(enabled: bool) -> Iterator[None]:
    """Run huggingface_hub (and libraries on top of it) in offline mode while ``enabled``."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    saved_constant, saved_env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_constant
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__]


def _hf_error_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(missing-locally / network errors, does-not-exist errors) of huggingface_hub."""
    try:
        from huggingface_hub import errors
    except ImportError:
        return (), ()
    missing = tuple(getattr(errors, n) for n in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") if hasattr(errors, n))
    absent = tuple(getattr(errors, n) for n in ("RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError") if hasattr(errors, n))
    return missing, absent


NETWORK_ERRORS: tuple[type, ...] = (urllib.error.URLError, ConnectionError, socket.timeout, socket.gaierror)


def _is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, NETWORK_ERRORS):
        return True
    module = type(exc).__module__ or ""
    return module.startswith(("httpx", "httpcore", "requests", "urllib3")) and "Error" in type(exc).__name__


def classify(exc: BaseException) -> str | None:
    """'missing' (not cached and no network), 'absent' (no such repository) or None (another error)."""
    missing, absent = _hf_error_types()
    for link in _chain(exc):
        if absent and isinstance(link, absent):
            return "absent"
        if (missing and isinstance(link, missing)) or _is_network_error(link):
            return "missing"
    return None


@contextmanager
def download_errors(spec: str, hint: str, url: str, offline: bool) -> Iterator[None]:
    """Turn "not cached and not downloadable" failures inside the block into one-line errors.

    A file that is neither cached nor downloadable raises
    :class:`OfflineModelError`; a repository the hub does not know raises
    :class:`UserError`. ``hint`` says what to pass instead (a local copy).
    """
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        kind = classify(exc)
        if kind == "missing" and offline:
            raise missing_download(spec, url, hint) from None
        if kind == "missing":
            raise OfflineModelError(
                f"{spec}: downloading the weights failed ({type(exc).__name__}); retry, or pass a local copy: {hint}"
            ) from None
        if kind == "absent":
            raise UserError(f"{spec}: the hub has no such (public) repository and no local folder of that name exists; pass {hint}") from None
        raise


@contextmanager
def hub_access(spec: str, hint: str, url: str | None = None) -> Iterator[bool]:
    """Wrap a Hugging Face hub-backed load of ``spec``; yields whether the network is off for it.

    With the network off, the Hugging Face libraries run in offline mode so
    nothing waits on retries: cached files load, missing ones fail at once.
    """
    url = url or hf_endpoint()
    offline = not network_allowed(url)
    with download_errors(spec, hint, url, offline), _forced_hf_offline(offline):
        yield offline


def missing_download(spec: str, url: str, hint: str) -> OfflineModelError:
    """The error for weights at ``url`` that are not cached while downloads are impossible."""
    return OfflineModelError(
        f"{spec}: weights are not in the local cache and cannot be downloaded ({offline_reason(url)}); "
        f"run once with network access to cache them, or pass a local copy: {hint}"
    )


@contextmanager
def weights_only_loading(spec: str) -> Iterator[None]:
    """Force ``torch.load(weights_only=True)`` inside third-party loaders (no arbitrary unpickling).

    A checkpoint that holds pickled Python objects beyond tensors is refused
    with a :class:`UserError` instead of being executed.
    """
    saved = {name: os.environ.get(name) for name in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    except pickle.UnpicklingError:
        raise UserError(
            f"{spec}: the checkpoint holds pickled Python objects beyond tensors, which are never unpickled here "
            "(torch.load(weights_only=True) refused it); "
            "export its state dict to safetensors and load it with file:PATH"
        ) from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
