"""plotly.js stored once per experiment, in a run of its own that every figure's HTML loads it from.

Each report and tokens run used to log its own 4.7 MB copy. Now the experiment holds one run per plotly
version, named `plotly.js <version>` and tagged `distill.asset=plotly.js`, `distill.asset.version=<version>`
(no `distill.phase`: phase searches never see it), with `figures/plotly.min.mjs`. It is found by its tags
and used only when the file is there at its full size; a figure that finds none logs it first. Two that
log it at the same moment each make one; both are complete, and later figures use the older.

A figure's HTML (figures.write_figure) loads it from, in order: `plotly.min.mjs` beside the HTML (a
downloaded folder the file was copied into); in the MLflow UI's artifact viewer, the server it was opened
from (`get-artifact` of this run); anywhere else, the address below: the file in a local artifact store
(the HTML opened from the store's folder), or the tracking server's `get-artifact` URL.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from distill import disk_full

ASSET = "distill.asset"
ASSET_VERSION = "distill.asset.version"
PLOTLY = "plotly.js"
PLOTLY_JS = "plotly.min.mjs"   # `.mjs`: the MLflow server sends it as text/javascript (a `.js` as text/plain)
FOLDER = "figures"
NOTE = ("plotly.js, stored once for every figure of this experiment (the report's Fig. 1-3, the tokens runs' "
        "figure); each figure's HTML loads it from here.")


@dataclass(frozen=True)
class SharedAsset:
    """Where a figure finds plotly.js: `path` of run `run_id`, and `address` outside the MLflow UI ("" none)."""

    run_id: str
    path: str
    address: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _version() -> str:
    import plotly

    return plotly.__version__


def _text() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _complete(client, run_id: str, size: int) -> bool:
    return any(f.path == f"{FOLDER}/{PLOTLY_JS}" and f.file_size == size
               for f in client.list_artifacts(run_id, FOLDER))


def _local_file(client, run_id: str, path: str) -> str:
    """The artifact's file in a local artifact store ("" in a remote one): what a full disk's line names."""
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    root = client.get_run(run_id).info.artifact_uri
    return (str(Path(local_file_uri_to_path(root), path))
            if is_local_uri(root, is_tracking_or_registry_uri=False) else "")


def _address(client, run_id: str, path: str) -> str:
    """The asset's address for a browser outside the MLflow UI."""
    import mlflow

    tracking = mlflow.get_tracking_uri()
    if tracking.startswith(("http://", "https://")):
        return f"{tracking.rstrip('/')}/get-artifact?path={quote(path, safe='')}&run_uuid={run_id}"
    local = _local_file(client, run_id, path)
    return Path(local).resolve().as_uri() if local else ""


def _end(client, run_id: str, status: str) -> None:
    try:
        client.set_terminated(run_id, status)
    except Exception:  # noqa: BLE001 - a full store: the line the CLI prints names the run
        disk_full.could_not_end(run_id)


def shared_plotlyjs(experiment_id: str) -> SharedAsset:
    """The experiment's plotly.js for the installed plotly, logged now if it has none."""
    from mlflow.tracking import MlflowClient

    client, version, text = MlflowClient(), _version(), _text()
    size = len(text.encode("utf-8"))
    found = client.search_runs([experiment_id],
                               f"tags.`{ASSET}` = '{PLOTLY}' and tags.`{ASSET_VERSION}` = '{version}' "
                               "and attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time ASC"], max_results=20)
    run_id = next((r.info.run_id for r in found if _complete(client, r.info.run_id, size)), None)
    if run_id is None:
        run_id = client.create_run(
            experiment_id, run_name=f"{PLOTLY} {version}",
            tags={ASSET: PLOTLY, ASSET_VERSION: version, "mlflow.note.content": NOTE},
        ).info.run_id
        what = f"plotly.js, shared by the experiment's figures, {disk_full.human(size)} to write"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / PLOTLY_JS
                with disk_full.writing(what, str(local)):
                    local.write_text(text, encoding="utf-8")
                with disk_full.writing(what, _local_file(client, run_id, f"{FOLDER}/{PLOTLY_JS}")):
                    client.log_artifact(run_id, str(local), FOLDER)
        except BaseException as e:
            _end(client, run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
    path = f"{FOLDER}/{PLOTLY_JS}"
    return SharedAsset(run_id, path, _address(client, run_id, path))
