"""What a tracking server with MLflow's own authentication (`mlflow server --app-name basic-auth`) lets
this process do, asked before anything is written.

Without these checks a missing or wrong password, or a user without a grant on the experiment, shows as
a deep `MlflowException ... 401 != 200` traceback, after the phase may already have loaded models, and a
user with READ only fails at its first run. The credentials are MLflow's own (MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, or ~/.mlflow/credentials): read by MLflow for each
request, never kept or shown here. A server without authentication answers 404 to these endpoints, and
nothing is checked.
"""

from __future__ import annotations

import os

from distill import DistillError
from distill.tracking.redact import redact_uri

# mlflow/server/auth/routes.py (GET_CURRENT_USER, GET_USER_PERMISSION); not imported: that module loads Flask
CURRENT_USER = "/api/2.0/mlflow/users/current"
USER_PERMISSION = "/api/3.0/mlflow/users/permissions/get"
EXPERIMENT_BY_NAME = "/api/2.0/mlflow/experiments/get-by-name"
EXPERIMENT_BY_ID = "/api/2.0/mlflow/experiments/get"
WRITES = ("EDIT", "MANAGE")  # mlflow/server/auth/permissions.py: can_update; creating a run needs it
TIMEOUT_S = 10
SET_UP = "docs/team-server.md"

_signed_in: dict[tuple[str, str], str | None] = {}  # (uri, credentials digest) -> user name, once per process


def _get(uri: str, endpoint: str, **params):
    """One GET with MLflow's credentials, no retries (MLflow retries for minutes by default)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    return http_request(get_default_host_creds(uri), endpoint, "GET", max_retries=0, timeout=TIMEOUT_S,
                        params=params or None)


def _credentials() -> tuple[str, str]:
    """(how this process introduces itself, for messages: never the password; a digest of the credentials,
    so that other credentials in the same process are asked about again)."""
    import hashlib

    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    token = os.environ.get("MLFLOW_TRACKING_TOKEN") or ""
    digest = hashlib.sha256("\0".join([creds.username or "", creds.password or "", token]).encode()).hexdigest()
    if creds.username:
        return f"user {creds.username!r}", digest
    return ("the token in MLFLOW_TRACKING_TOKEN" if token else ""), digest


def signed_in_user(uri: str) -> str | None:
    """The user name the server at `uri` knows this process as; None where it has no authentication.
    A server that refuses the credentials (or wants some) is a DistillError of one line."""
    who, digest = _credentials()
    if (uri, digest) in _signed_in:
        return _signed_in[(uri, digest)]
    from mlflow.exceptions import MlflowException

    shown = redact_uri(uri)
    try:
        response = _get(uri, CURRENT_USER)
    except MlflowException as e:  # the server answered nothing usable (it was up a moment ago)
        reason = e.message.splitlines()[0].replace(uri, shown)
        raise DistillError(f"the MLflow tracking server at {shown} did not answer ({reason})") from None
    if response.status_code == 401:
        if not who:
            raise DistillError(f"the MLflow tracking server at {shown} asks who you are: set "
                               f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user its admin "
                               f"created ({SET_UP})")
        if who.startswith("the token"):
            raise DistillError(f"the MLflow tracking server at {shown} refused {who}")
        raise DistillError(f"the MLflow tracking server at {shown} refused {who}: wrong user name or password "
                           "(MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD)")
    user = None
    if response.status_code == 200:
        try:
            user = (response.json().get("user") or {}).get("username")
        except ValueError:  # not MLflow's JSON (a page of a proxy): no authentication to ask about
            user = None
    _signed_in[(uri, digest)] = user
    return user


def check_can_write(uri: str, experiment_name: str | None = None, experiment_id: str | None = None) -> None:
    """A DistillError naming the experiment unless the signed-in user may write runs into it (EDIT or
    MANAGE). An experiment that does not exist yet is left to be created (its creator gets MANAGE)."""
    user = signed_in_user(uri)
    if user is None:
        return
    shown = redact_uri(uri)
    label = repr(experiment_name) if experiment_name else f"with id {experiment_id}"
    if experiment_id:
        response = _get(uri, EXPERIMENT_BY_ID, experiment_id=experiment_id)
    else:
        response = _get(uri, EXPERIMENT_BY_NAME, experiment_name=experiment_name)
    if response.status_code in (401, 403):
        raise DistillError(f"user {user!r} has no permission on the experiment {label} at {shown}: running "
                           f"the study needs EDIT on it; ask the server's admin ({SET_UP})")
    if response.status_code != 200:
        return  # none by that name yet (404): this process creates it and gets MANAGE on it
    experiment = response.json()["experiment"]
    response = _get(uri, USER_PERMISSION, username=user, resource_type="experiment",
                    resource_id=experiment["experiment_id"])
    if response.status_code != 200:
        return  # a server that cannot say (an older auth app): its 403 comes at the first write
    permission = response.json().get("permission", "")
    if permission not in WRITES:
        raise DistillError(f"user {user!r} may not write to the experiment {experiment['name']!r} at {shown} "
                           f"(permission {permission or 'none'}): running the study needs EDIT on it; ask the "
                           f"server's admin ({SET_UP})")
