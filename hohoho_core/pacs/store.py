"""STOW-RS: send DICOM objects (our structured reports) to the server."""

from __future__ import annotations

from collections.abc import Sequence

import pydicom

from hohoho_core.pacs._http import calling, make_client
from hohoho_core.pacs.server import DicomwebServer, PacsError

__all__ = ["store_instances"]


def store_instances(server: DicomwebServer, datasets: Sequence[pydicom.Dataset]) -> int:
    """Store ``datasets`` (all of one study) on ``server``; returns how many it accepted.

    Raises:
        PacsError: the server is down, refused, or reports any instance as failed.
    """
    if not datasets:
        return 0
    study_uids = {str(ds.StudyInstanceUID) for ds in datasets}
    if len(study_uids) != 1:
        raise PacsError("one store sends the objects of one study")
    client = make_client(server)
    with calling(server, "the store (STOW-RS)"):
        answer = client.store_instances(list(datasets), study_instance_uid=study_uids.pop())
        failed = len(answer.get("FailedSOPSequence", []) or []) if answer is not None else 0
        stored = len(answer.get("ReferencedSOPSequence", []) or []) if answer is not None else 0
    if failed:
        raise PacsError(
            f"DICOMweb server {server.display_url} refused {failed} of {len(datasets)} "
            "objects sent by STOW-RS"
        )
    return stored or len(datasets)
