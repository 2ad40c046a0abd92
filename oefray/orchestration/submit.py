"""``oefray submit``: run a pipeline stage as a Ray job on a cluster (``jobs/<stage>.yaml``).

A job spec is a small YAML file whose keys are the keyword arguments of Ray's
:meth:`ray.job_submission.JobSubmissionClient.submit_job` (``entrypoint``, ``runtime_env``,
``metadata``, ``entrypoint_num_cpus``, ...), so it says nothing Ray does not already define. The
entrypoint runs in a shell on the head node; its paths come from ``runtime_env.env_vars``, which
``--set NAME=VALUE`` overrides at submission.

Authentication follows Ray's token scheme (ray 2.60: ``ray start --head`` turns it on when it finds
a token or ``RAY_AUTH_MODE=token`` is set, as ``cluster.yaml`` does). The token is read from
``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token`` (Ray's
own order), and sent as an ``Authorization: Bearer`` header only where it belongs:

- ``RAY_AUTH_MODE`` unset: the first request (``GET /api/version``) goes without it; only if the
  job server answers 401 (Ray's dashboard: ``Unauthorized: Missing authentication token``, which
  Ray's client raises as :class:`ray.exceptions.AuthenticationError`) is the connection made again
  with the token, if one is found. A cluster without authentication never receives it.
- ``RAY_AUTH_MODE=token``, or ``submit(..., token=True)`` (``oefray submit --token``, which wins
  over ``RAY_AUTH_MODE=disabled``): sent with every request; no token is an error.
- ``RAY_AUTH_MODE=disabled``: never sent.

Before the token goes over plain ``http://`` to a host that is not loopback (127.0.0.0/8, ::1,
``localhost``), a WARNING says so: it travels unencrypted there; forwarding the dashboard to
localhost (``ray dashboard cluster.yaml``, ``ssh -L``) or an ``https://`` address avoids that.

Oefray decides, not Ray's process state: Ray's client would add the machine's token on its own when
this process's Ray configuration has token mode (after a ``ray.init()`` here), and would replace
the address it is given with ``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS``; :func:`connect` stops
both, so the token reaches exactly the address that was checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import ipaddress
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from oefray.errors import OefrayError
from oefray.orchestration.runtime import probe_tcp

log = logging.getLogger(__name__)

#: Keys of a job spec, each a keyword argument of ``JobSubmissionClient.submit_job``.
SPEC_KEYS = (
    "entrypoint",
    "runtime_env",
    "metadata",
    "entrypoint_num_cpus",
    "entrypoint_num_gpus",
    "entrypoint_memory",
    "entrypoint_resources",
)

#: Where the job server is when neither ``--address`` nor the environment says otherwise.
DEFAULT_ADDRESS = "http://127.0.0.1:8265"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Called with each chunk of the job's logs while following it.
LogFn = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Job specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """A parsed, validated job spec.

    Parameters
    ----------
    path : Path
        The YAML file it came from.
    entrypoint : str
        The shell command run on the head node.
    runtime_env : dict
        Ray runtime environment (``env_vars``, ``working_dir``, ``pip``, ...).
    options : dict
        The other ``submit_job`` keyword arguments the spec gave (metadata, entrypoint resources).
    """

    path: Path
    entrypoint: str
    runtime_env: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The stage name: the file name without its suffix (``preprocess``, ``train``, ...)."""
        return self.path.stem

    @property
    def env_vars(self) -> dict[str, str]:
        return dict(self.runtime_env.get("env_vars", {}))

    def submit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``JobSubmissionClient.submit_job``."""
        out: dict[str, Any] = {"entrypoint": self.entrypoint, **self.options}
        if self.runtime_env:
            out["runtime_env"] = self.runtime_env
        return out


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["NAME=VALUE", ...]`` as a dict; raises OefrayError on a malformed item."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise OefrayError(
                None, f"--set expects NAME=VALUE with NAME an environment variable, got {item!r}"
            )
        out[name] = value
    return out


def read_job_spec(path: str | os.PathLike[str], overrides: Mapping[str, str] = {}) -> JobSpec:
    """Read and validate a job spec; ``overrides`` replace or add ``runtime_env.env_vars``.

    Raises
    ------
    OefrayError
        One line naming the file: not found, malformed YAML, not a mapping, an unknown key, a
        missing or empty entrypoint, a value of the wrong type, an unknown runtime_env field.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise OefrayError(path, f"cannot read the job spec ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise OefrayError(path, f"malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise OefrayError(path, "a job spec is a mapping with at least an 'entrypoint' key")
    unknown = sorted(str(k) for k in data if k not in SPEC_KEYS)
    if unknown:
        raise OefrayError(
            path, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SPEC_KEYS)}"
        )
    entrypoint = data.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise OefrayError(path, "missing 'entrypoint' (the command the job runs, a string)")
    runtime_env = _check_runtime_env(path, data.get("runtime_env") or {}, overrides)
    options = {k: data[k] for k in SPEC_KEYS[2:] if data.get(k) is not None}
    _check_options(path, options)
    return JobSpec(
        path=path, entrypoint=entrypoint.strip(), runtime_env=runtime_env, options=options
    )


def _check_runtime_env(
    path: Path, runtime_env: Any, overrides: Mapping[str, str]
) -> dict[str, Any]:
    from ray.runtime_env import RuntimeEnv

    if not isinstance(runtime_env, dict):
        raise OefrayError(path, "'runtime_env' must be a mapping (env_vars, working_dir, pip, ...)")
    known = sorted(f for f in RuntimeEnv.known_fields if not f.startswith("_"))
    unknown = sorted(str(k) for k in runtime_env if k not in known)
    if unknown:
        raise OefrayError(
            path,
            f"unknown runtime_env field(s) {', '.join(unknown)}; Ray knows: {', '.join(known)}",
        )
    runtime_env = dict(runtime_env)
    env_vars = runtime_env.get("env_vars") or {}
    if not isinstance(env_vars, dict):
        raise OefrayError(path, "'runtime_env.env_vars' must be a mapping of NAME: value")
    for name, value in env_vars.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise OefrayError(path, f"runtime_env.env_vars: {name!r} is not a variable name")
        if not isinstance(value, str):
            raise OefrayError(
                path, f"runtime_env.env_vars.{name} must be a string (quote it), got {value!r}"
            )
    env_vars = {**env_vars, **overrides}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    working_dir = runtime_env.get("working_dir")
    if isinstance(working_dir, str) and "://" not in working_dir:
        # a local folder is uploaded by the client: resolve it against the spec, not the cwd
        local = (path.parent / working_dir).resolve()
        if not local.is_dir():
            raise OefrayError(path, f"runtime_env.working_dir {working_dir!r} is not a folder")
        runtime_env["working_dir"] = str(local)
    try:
        RuntimeEnv(**runtime_env)  # Ray's own type checks
    except (TypeError, ValueError) as exc:
        raise OefrayError(path, f"runtime_env: {exc}") from None
    return runtime_env


def _check_options(path: Path, options: dict[str, Any]) -> None:
    metadata = options.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise OefrayError(path, "'metadata' must map strings to strings")
    for key in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory"):
        value = options.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise OefrayError(path, f"'{key}' must be a number >= 0, got {value!r}")
    if isinstance(options.get("entrypoint_memory"), float):
        raise OefrayError(path, "'entrypoint_memory' is in bytes, an integer")
    resources = options.get("entrypoint_resources", {})
    if not isinstance(resources, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
        for k, v in resources.items()
    ):
        raise OefrayError(path, "'entrypoint_resources' must map resource names to numbers >= 0")


# --------------------------------------------------------------------------------------------
# The job server: address, token, reachability
# --------------------------------------------------------------------------------------------


def resolve_address(address: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The job server URL: ``address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS`` when
    it is an http(s) URL (a bare ``host:6379`` is a GCS address, not the job server), else
    :data:`DEFAULT_ADDRESS`. A bare ``host:port`` becomes ``http://host:port``."""
    candidates = [address, environ.get("RAY_API_SERVER_ADDRESS")]
    ray_address = environ.get("RAY_ADDRESS", "")
    if ray_address.startswith(("http://", "https://")):
        candidates.append(ray_address)
    chosen = next((a.strip() for a in candidates if a and a.strip()), DEFAULT_ADDRESS)
    if "://" not in chosen:
        chosen = f"http://{chosen}"
    return chosen.rstrip("/")


#: Where a token is sent (:func:`token_policy`): with every request, never, or only once the
#: job server answers 401.
ALWAYS, NEVER, WHEN_ASKED = "always", "never", "when-asked"

#: Host names that stay on this machine (besides the 127.0.0.0/8 and ::1 addresses).
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


@dataclass(frozen=True)
class Token:
    """A Ray authentication token and where it was found.

    Parameters
    ----------
    value : str
        The token (never in a repr or a log line).
    source : str
        Where it came from, for log lines: ``RAY_AUTH_TOKEN``, ``<path> (RAY_AUTH_TOKEN_PATH)``
        or ``~/.ray/auth_token``.
    """

    value: str = field(repr=False)
    source: str

    def header(self) -> dict[str, str]:
        """The ``Authorization`` header that carries it."""
        return {"Authorization": f"Bearer {self.value}"}


def find_token(environ: Mapping[str, str] = os.environ) -> Token | None:
    """The Ray token, from Ray's sources in Ray's order, or None if there is none.

    ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token``
    (``HOME`` of ``environ``).

    Raises
    ------
    OefrayError
        One line naming the file: ``RAY_AUTH_TOKEN_PATH`` unreadable or empty.
    """
    token = environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return Token(token, "RAY_AUTH_TOKEN")
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        token_path = Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            token = token_path.read_text().strip()
        except OSError as exc:
            raise OefrayError(
                token_path, f"cannot read the Ray token (RAY_AUTH_TOKEN_PATH): {exc.strerror}"
            ) from None
        if not token:
            raise OefrayError(token_path, "the Ray token file (RAY_AUTH_TOKEN_PATH) is empty")
        return Token(token, f"{token_path} (RAY_AUTH_TOKEN_PATH)")
    default = Path(environ.get("HOME", "~")).expanduser() / ".ray" / "auth_token"
    with contextlib.suppress(OSError):
        token = default.read_text().strip()
    return Token(token, "~/.ray/auth_token") if token else None


def token_policy(environ: Mapping[str, str] = os.environ, *, force: bool = False) -> str:
    """When the token is sent: :data:`ALWAYS` (``force``, i.e. ``--token``, or
    ``RAY_AUTH_MODE=token``), :data:`NEVER` (``RAY_AUTH_MODE=disabled``), else
    :data:`WHEN_ASKED` (after the job server answers 401)."""
    mode = environ.get("RAY_AUTH_MODE", "").strip().lower()
    if force or mode == "token":
        return ALWAYS
    return NEVER if mode == "disabled" else WHEN_ASKED


def cleartext_host(address: str) -> str | None:
    """The host a token sent to ``address`` would reach unencrypted, or None.

    That is the host of a plain ``http://`` address that is not loopback (127.0.0.0/8, ::1,
    ``localhost``); None for ``https://`` and for loopback (a ``ray dashboard`` or ``ssh -L``
    tunnel ends there, and encrypts the way to the head).
    """
    parts = urlsplit(address)
    host = (parts.hostname or "").lower()
    if parts.scheme != "http" or not host or host in _LOOPBACK_NAMES:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name that is not localhost: it may resolve anywhere
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return None if ip.is_loopback else host


def warn_cleartext(address: str) -> None:
    """Log one WARNING line if a token sent to ``address`` travels unencrypted
    (:func:`cleartext_host`)."""
    host = cleartext_host(address)
    if host is not None:
        log.warning(
            "sending the Ray token to %s over plain http: it travels unencrypted; forward the "
            "dashboard to localhost (`ray dashboard cluster.yaml`, or `ssh -L 8265:localhost:8265 "
            "<head>`) and submit to http://127.0.0.1:8265, or use an https:// address",
            host,
        )


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one line when the job server's host:port does not accept connections
    (``requests`` would otherwise wait for the operating system's connect timeout)."""
    parts = urlsplit(address)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise OefrayError(address, "not a job server address (http://<head>:8265)") from None
    if not parts.hostname or parts.scheme not in ("http", "https"):
        raise OefrayError(address, "not a job server address (http://<head>:8265)")
    probe_tcp(parts.hostname, port, "Ray job server", address, timeout_s)


# --------------------------------------------------------------------------------------------
# Submitting and following
# --------------------------------------------------------------------------------------------


@dataclass
class SubmittedJob:
    """A job on a cluster: its submission id, the server, the spec it came from."""

    submission_id: str
    address: str
    spec: JobSpec
    client: Any  # ray.job_submission.JobSubmissionClient
    submitted_at: float = field(default_factory=time.time)

    def message(self) -> str:
        return str(self.client.get_job_info(self.submission_id).message or "")


def connect(address: str | None = None, *, token: bool = False, timeout_s: float = 5.0) -> Any:
    """A ``JobSubmissionClient`` on the resolved address, checked live, with the token only where
    :func:`token_policy` says (``token=True``: with every request).

    Raises
    ------
    OefrayError
        One line: unreachable server, rejected or missing token, not a Ray job server.
    """
    from ray.exceptions import AuthenticationError

    url = resolve_address(address)
    check_reachable(url, timeout_s)
    policy = token_policy(force=token)
    if policy == ALWAYS:
        found = find_token()
        if found is None:
            why = "--token" if token else "RAY_AUTH_MODE=token"
            raise OefrayError(
                None,
                f"{why} but no Ray token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, "
                "or put the cluster's token in ~/.ray/auth_token",
            )
        return _open_client(url, found)
    try:
        return _open_client(url, None)
    except AuthenticationError as exc:
        # Ray's client words a 401 "Authentication required: <body>" and a 403 "Authentication
        # failed: <body>" (ray._private.authentication.http_token_authentication)
        asked = exc.message.startswith("Authentication required")
        found = find_token() if asked and policy == WHEN_ASKED else None
        if found is None:
            hint = (
                "; RAY_AUTH_MODE=disabled sends none (unset it, or add --token)"
                if policy == NEVER
                else ""
            )
            raise OefrayError(url, _auth_problem(str(exc)) + hint) from None
    log.info("the cluster asks for a token; sending %s", found.source)
    return _open_client(url, found)


def _open_client(url: str, token: Token | None) -> Any:
    """``JobSubmissionClient(url)`` with ``token``'s header, or with none at all.

    Raises Ray's ``AuthenticationError`` for a request without a token that the server refused
    (the caller decides whether to send one); every other failure is one line.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if token is not None:
        warn_cleartext(url)
        headers: dict[str, Any] = token.header()
    else:
        # a user's Authorization key keeps Ray's client from adding the machine's token itself,
        # and `requests` sends no header whose value is None
        headers = {"Authorization": None}
    try:
        with _address_as_given():
            client = JobSubmissionClient(url, headers=headers)
    except AuthenticationError as exc:
        if token is None:
            raise
        raise OefrayError(url, _auth_problem(str(exc))) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise OefrayError(url, f"not a Ray job server ({_first_line(exc)})") from None
    if token is None:
        # the log stream (aiohttp) would refuse a None value: no key at all from here on
        client._headers.pop("Authorization", None)
    return client


@contextlib.contextmanager
def _address_as_given() -> Iterator[None]:
    """Hide ``RAY_API_SERVER_ADDRESS`` and ``RAY_ADDRESS`` while Ray's client is built: it would
    take either over the address it is given (:func:`resolve_address` has weighed them)."""
    saved = {
        k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ
    }
    try:
        yield
    finally:
        os.environ.update(saved)


def submit(
    spec: JobSpec,
    address: str | None = None,
    *,
    token: bool = False,
    submission_id: str | None = None,
) -> SubmittedJob:
    """Submit ``spec``; returns at once with the job's handle.

    ``token=True`` sends the Ray token with every request (:func:`connect`). The submission id
    is ``oefray-<stage>-<UTC time>-<4 hex>`` unless given, so the dashboard's job list says which
    stage each job is.
    """
    from ray.exceptions import AuthenticationError

    client = connect(address, token=token)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    submission_id = submission_id or f"oefray-{spec.name}-{stamp}-{uuid.uuid4().hex[:4]}"
    kwargs = spec.submit_kwargs()
    kwargs["metadata"] = {"oefray.spec": spec.path.name, **kwargs.get("metadata", {})}
    try:
        job_id = client.submit_job(submission_id=submission_id, **kwargs)
    except AuthenticationError as exc:
        raise OefrayError(client.get_address(), _auth_problem(str(exc))) from None
    except (RuntimeError, ValueError, TypeError) as exc:
        raise OefrayError(spec.path, f"the job server refused the job ({exc})") from None
    return SubmittedJob(job_id, client.get_address(), spec, client)


@dataclass(frozen=True)
class JobOutcome:
    """How a followed job ended: Ray's status (``SUCCEEDED``, ``FAILED``, ``STOPPED``), Ray's
    message about it (one line), and the seconds from submission to the end."""

    status: str
    message: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "SUCCEEDED"


def follow(job: SubmittedJob, on_logs: LogFn | None = None, *, poll_s: float = 0.5) -> JobOutcome:
    """Stream the job's logs to ``on_logs`` until it ends, then return how it ended.

    The log stream is Ray's ``tail_job_logs`` websocket; when it closes (the job ended, or the
    connection dropped) the status is polled until it is terminal.
    """
    if on_logs is not None:
        # Ray's job SDK sets its logger to INFO at import and says "WebSocket closed for job ..."
        # at the end of every stream: noise between the job's last line and ours
        logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)

        async def _tail() -> None:
            async for chunk in job.client.tail_job_logs(job.submission_id):
                on_logs(chunk)

        try:
            asyncio.run(_tail())
        except RuntimeError:
            pass  # the stream closed early: the status below says how the job ended
    while True:
        status = job.client.get_job_status(job.submission_id)
        if status.is_terminal():
            # Ray appends the job's last logs to a failure message; they were streamed already
            message = " ".join(job.message().split(", last available logs")[0].split())
            return JobOutcome(str(status.value), message, time.time() - job.submitted_at)
        time.sleep(poll_s)


def _auth_problem(text: str) -> str:
    first = _first_line(text)
    return (
        f"the cluster rejected the request ({first}); give its token through RAY_AUTH_TOKEN, "
        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
    )


def _first_line(exc: object) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
